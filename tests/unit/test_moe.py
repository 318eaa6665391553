"""MoE routing and dispatch (spec section 3): sigmoid top-k, score on the expert input, sort == dense oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama4_jax.ops.moe import (OVERFLOW_GROUP, block_rows_for, blocked_capacity, capacity_rows, load_statistics,
                                sort_assignments,
                                moe_blocked, moe_dense, moe_gathered, moe_sort as _moe_sort, overflow_runs, route,
                                sort_assignments)


# The tests keep separate gate / up weights; the ops take them fused as [E, D, 2, F].
def _fused(impl):
  return lambda x, scores, experts, g, u, d: impl(x, scores, experts, jnp.stack([g, u], axis=2), d)


moe_sort = _fused(_moe_sort)
moe_dense = _fused(moe_dense)
moe_blocked_small = _fused(functools.partial(moe_blocked, block=4))  # several blocks and padding even at T=12
# A capacity of a fifth of the mean group: nearly everything goes through the overflow blocks.
moe_blocked_overflow = _fused(functools.partial(moe_blocked, block=4, capacity_factor=0.2))
moe_gathered = _fused(moe_gathered)


def _weights(rs, e, d, f, scale=0.5):
  return tuple(jnp.asarray(scale * rs.randn(*shape).astype(np.float32)) for shape in ((e, d, f), (e, d, f), (e, f, d)))


def _silu(x):
  return x / (1 + np.exp(-x))


def test_route_picks_top_k_logits_and_sigmoid_scores():
  rs = np.random.RandomState(0)
  t, d, e, k = 9, 8, 5, 2
  x_TD = rs.randn(t, d).astype(np.float32)
  router_DE = rs.randn(d, e).astype(np.float32)
  scores_TK, experts_TK, logits_TE = route(jnp.asarray(x_TD), jnp.asarray(router_DE), k)
  logits = x_TD.astype(np.float64) @ router_DE.astype(np.float64)
  np.testing.assert_allclose(np.asarray(logits_TE), logits, rtol=1e-5, atol=1e-5)
  expected_experts = np.argsort(-logits, axis=1)[:, :k]
  np.testing.assert_array_equal(np.asarray(experts_TK), expected_experts)
  assert experts_TK.dtype == jnp.int32
  top = np.take_along_axis(logits, expected_experts, axis=1)
  np.testing.assert_allclose(np.asarray(scores_TK), 1 / (1 + np.exp(-top)), rtol=1e-5, atol=1e-6)
  # No renormalisation over the chosen k: the scores of a token do not sum to 1.
  assert np.all(np.abs(np.asarray(scores_TK).sum(-1) - 1) > 1e-3)


def test_route_top1_score_is_not_renormalised():
  rs = np.random.RandomState(1)
  x_TD = jnp.asarray(rs.randn(16, 4).astype(np.float32))
  scores_TK, _, logits_TE = route(x_TD, jnp.asarray(rs.randn(4, 3).astype(np.float32)), 1)
  # A softmax-then-renormalise router would give exactly 1 for top-1.
  assert np.all(np.asarray(scores_TK) < 1.0)
  np.testing.assert_allclose(np.asarray(scores_TK)[:, 0], np.asarray(jax.nn.sigmoid(logits_TE.max(-1))), rtol=1e-6)


@functools.partial(jax.jit, static_argnums=6)
def _sort_and_dense(x_TD, router_DE, gate, up, down, w_TD, k):
  """Routed output and its VJP (cotangent w_TD) w.r.t. x, router and expert weights, for both dispatch paths."""
  out = {}
  for name, impl in (("sort", moe_sort), ("blocked", moe_blocked_small), ("blocked_overflow", moe_blocked_overflow),
                     ("dense", moe_dense), ("gathered", moe_gathered)):
    def moe(x, router, g, u, d, impl=impl):
      scores_TK, experts_TK, _ = route(x, router, k)
      return impl(x, scores_TK, experts_TK, g, u, d)

    fwd, pullback = jax.vjp(moe, x_TD, router_DE, gate, up, down)
    out[name] = (fwd, pullback(w_TD))
  return out


@pytest.mark.parametrize("e, k", [(1, 1), (3, 1), (3, 2), (8, 1), (8, 2), (16, 1), (16, 2)])
def test_sort_equals_dense_forward_and_gradients(e, k):
  rs = np.random.RandomState(e * 10 + k)
  t, d, f = 12, 8, 6
  x_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  router_DE = jnp.asarray(rs.randn(d, e).astype(np.float32))
  gate, up, down = _weights(rs, e, d, f)
  w_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  out = _sort_and_dense(x_TD, router_DE, gate, up, down, w_TD, k)
  (fwd_sort, grads_sort), (fwd_dense, grads_dense) = out["sort"], out["dense"]
  assert fwd_sort.shape == (t, d)
  for impl in ("sort", "blocked", "blocked_overflow", "gathered"):
    np.testing.assert_allclose(np.asarray(out[impl][0]), np.asarray(fwd_dense), rtol=1e-5, atol=1e-5)
    for name, gs, gd in zip(("x", "router", "gate", "up", "down"), out[impl][1], grads_dense):
      np.testing.assert_allclose(np.asarray(gs), np.asarray(gd), rtol=1e-4, atol=1e-4, err_msg=f"{impl} {name}")
  assert float(jnp.abs(grads_sort[1]).max()) > 0  # the router gets a gradient through the score
  if e == 16:  # 12 tokens x k slots cannot cover 16 experts
    _, experts_TK, _ = route(x_TD, router_DE, k)
    assert (np.bincount(np.asarray(experts_TK).ravel(), minlength=e) == 0).any()


def test_sort_equals_dense_with_empty_groups():
  # Every token goes to experts 2 and 5 of 8: empty groups before, between and after the used ones.
  rs = np.random.RandomState(4)
  t, d, f, e = 10, 8, 6, 8
  x_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  first_T = np.where(np.arange(t) % 3 == 0, 5, 2)
  experts_TK = jnp.asarray(np.stack([first_T, 7 - first_T], 1).astype(np.int32))
  scores_TK = jnp.asarray(rs.rand(t, 2).astype(np.float32))
  gate, up, down = _weights(rs, e, d, f)
  w_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  _, _, group_sizes_E = sort_assignments(experts_TK, e)
  assert np.asarray(group_sizes_E).tolist() == [0, 0, t, 0, 0, t, 0, 0]

  @jax.jit
  def both(x, scores, g, u, d):
    results = []
    for impl in (moe_sort, moe_dense, moe_blocked_small, moe_blocked_overflow):  # VJP w.r.t. x, scores, weights
      fwd, pullback = jax.vjp(lambda *a, impl=impl: impl(a[0], a[1], experts_TK, *a[2:]), x, scores, g, u, d)
      results.append((fwd, pullback(w_TD)))
    return results

  (fwd_sort, grads_sort), (fwd_dense, grads_dense), *blocked = both(x_TD, scores_TK, gate, up, down)
  for fwd, grads in ((fwd_sort, grads_sort), *blocked):
    np.testing.assert_allclose(np.asarray(fwd), np.asarray(fwd_dense), rtol=1e-5, atol=1e-5)
    for name, gs, gd in zip(("x", "scores", "gate", "up", "down"), grads, grads_dense):
      np.testing.assert_allclose(np.asarray(gs), np.asarray(gd), rtol=1e-4, atol=1e-4, err_msg=name)
  unused = [0, 1, 3, 4, 6, 7]
  for g in grads_sort[2:]:
    assert np.all(np.asarray(g)[unused] == 0)
    assert np.abs(np.asarray(g)[[2, 5]]).max() > 0


def test_capacity_rows_fill_each_experts_first_assignments_and_invert():
  # Assignments to experts [0, 2, 0, 0, 2, 0, 0] (expert 0 has 5, expert 1 none, expert 2 has 2); capacity 3.
  experts = jnp.asarray([[0], [2], [0], [0], [2], [0], [0]], jnp.int32)
  order, inverse, sizes = sort_assignments(experts, 3)
  assignment_R, row_A = (np.asarray(x).tolist() for x in capacity_rows(experts.reshape(-1), order, inverse, sizes, 3))
  assert assignment_R == [0, 2, 3, -1, -1, -1, 1, 4, -1]  # [E, cap] rows: each expert's first min(n_e, cap)
  assert row_A == [0, 6, 1, 2, 7, -1, -1]  # assignments 5 and 6 (expert 0's 4th and 5th) overflow
  for row, assignment in enumerate(assignment_R):  # a partial permutation and its inverse
    assert assignment < 0 or row_A[assignment] == row
  assert sorted(a for a in assignment_R if a >= 0) + [5, 6] == list(range(7))  # nothing dropped


def test_overflow_runs_list_each_overflowing_expert_once_with_its_sorted_span():
  # Groups 9, 2, 0, 13 (sorted positions 0-8, 9-10, -, 11-23) with capacity 4 and blocks of 2.
  sizes = jnp.asarray([9, 2, 0, 13], jnp.int32)
  experts, begin, end, blocks, num_runs = (np.asarray(a).tolist() for a in overflow_runs(sizes, cap=4, block=2))
  assert num_runs == 2 and experts[:2] == [0, 3]
  assert begin[:2] == [4, 15] and end[:2] == [9, 24]  # overflow 5 rows (3 blocks) and 9 rows (5 blocks)
  assert blocks[:2] == [3, 5] and blocks[2:] == [0, 0]


def test_blocked_capacity_is_the_mean_plus_three_sigma_unless_a_factor_is_given():
  assert blocked_capacity(2048, 8) == 256 + 48  # 1.19x the mean group
  assert blocked_capacity(2048, 128) == 16 + 12  # small groups fluctuate more: 1.75x
  assert blocked_capacity(32768, 8) == 4096 + 192
  assert blocked_capacity(2048, 8, capacity_factor=1.25) == 320
  assert blocked_capacity(3, 8) == 3 and blocked_capacity(1, 64, capacity_factor=0.5) == 1  # never zero rows
  with pytest.raises(ValueError, match="capacity_factor"):
    blocked_capacity(2048, 8, capacity_factor=0.0)


def test_blocked_block_rows_follow_tokens_per_expert():
  assert block_rows_for(2048, 8) == 128  # 256 assignments per expert: full blocks
  assert block_rows_for(2048, 32) == 64
  assert block_rows_for(2048, 128) == 32  # 16 per expert: not padded to 128 rows each
  assert block_rows_for(12, 3) == 12  # never more rows than assignments
  assert block_rows_for(2048, 8, block=16) == 16


@pytest.mark.parametrize("capacity_factor", [None, 0.5, 0.1])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-4), (jnp.bfloat16, 3e-2)])
def test_blocked_default_blocks_match_dense_with_partial_blocks(dtype, tol, capacity_factor):
  """Default overflow blocks (T * k = 600, E = 4 -> 32 rows) over the default capacity, half and a tenth of the mean
  group (then several full and partial overflow blocks per expert; at a tenth, runs of OVERFLOW_GROUP blocks as one
  product and single blocks after them): outputs and all gradients equal the dense oracle; in bf16 the weight
  gradients of the overflow blocks are summed in fp32."""
  rs = np.random.RandomState(9)
  t, d, f, e, k = 300, 16, 8, 4, 2
  x_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  router_DE = jnp.asarray(rs.randn(d, e).astype(np.float32))
  gate, up, down = _weights(rs, e, d, f, scale=0.3)
  w_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  assert block_rows_for(t * k, e) == 128

  scores_TK, experts_TK, _ = route(x_TD, router_DE, k)  # one routing for both (bf16 logits could tie differently)

  def vjp(impl, dt):
    def moe(x, g, u, dn):
      return impl(x, scores_TK.astype(dt), experts_TK, g, u, dn)
    args = tuple(a.astype(dt) for a in (x_TD, gate, up, down))
    fwd, pullback = jax.vjp(moe, *args)
    return fwd, pullback(w_TD.astype(dt))

  groups = np.bincount(np.asarray(experts_TK).ravel(), minlength=e)
  # The default capacity holds every group here (capacity part only); half the mean overflows (both parts).
  assert (groups > blocked_capacity(t * k, e, capacity_factor)).any() == (capacity_factor is not None)
  blocks = -(-np.maximum(groups - blocked_capacity(t * k, e, capacity_factor), 0) // 32)
  if capacity_factor == 0.1:  # grouped runs, and single blocks after a group
    assert (blocks >= OVERFLOW_GROUP).all() and (blocks % OVERFLOW_GROUP > 0).any(), blocks
  else:
    assert (blocks < OVERFLOW_GROUP).all(), blocks
  fwd_b, grads_b = jax.jit(lambda: vjp(_fused(functools.partial(moe_blocked, capacity_factor=capacity_factor)),
                                       dtype))()
  fwd_d, grads_d = jax.jit(lambda: vjp(moe_dense, jnp.float32))()
  scale = float(jnp.abs(fwd_d).max())
  np.testing.assert_allclose(np.asarray(fwd_b, np.float32), np.asarray(fwd_d), atol=tol * scale, rtol=tol)
  for name, gb, gd in zip(("x", "gate", "up", "down"), grads_b, grads_d):
    assert gb.dtype == dtype
    gscale = float(jnp.abs(gd).max())
    np.testing.assert_allclose(np.asarray(gb, np.float32), np.asarray(gd), atol=tol * gscale, rtol=tol,
                               err_msg=name)


def test_score_scales_the_expert_input_not_its_output():
  rs = np.random.RandomState(5)
  t, d, f, e = 7, 8, 6, 3
  x_TD = rs.randn(t, d).astype(np.float32)
  router_DE = rs.randn(d, e).astype(np.float32)
  gate, up, down = _weights(rs, e, d, f, scale=1.0)
  scores_TK, experts_TK, _ = route(jnp.asarray(x_TD), jnp.asarray(router_DE), 1)
  s_T, e_T = np.asarray(scores_TK)[:, 0].astype(np.float64), np.asarray(experts_TK)[:, 0]
  g, u, dn = (np.asarray(w, np.float64) for w in (gate, up, down))
  on_input = np.zeros((t, d))
  on_output = np.zeros((t, d))
  for i in range(t):
    xs = s_T[i] * x_TD[i]
    on_input[i] = (_silu(xs @ g[e_T[i]]) * (xs @ u[e_T[i]])) @ dn[e_T[i]]
    on_output[i] = s_T[i] * ((_silu(x_TD[i] @ g[e_T[i]]) * (x_TD[i] @ u[e_T[i]])) @ dn[e_T[i]])
  both = jax.jit(lambda *a: (moe_sort(*a), moe_dense(*a)))(jnp.asarray(x_TD), scores_TK, experts_TK, gate, up, down)
  for out in both:
    out = np.asarray(out)
    np.testing.assert_allclose(out, on_input, rtol=1e-5, atol=1e-5)
    assert np.abs(out - on_output).max() > 1e-2  # SwiGLU is not homogeneous, so the placement matters


def test_load_statistics_fractions_sum_to_one_and_ignore_invalid_tokens():
  rs = np.random.RandomState(6)
  t, e, k = 10, 4, 2
  logits_TE = rs.randn(t, e).astype(np.float32)
  experts_TK = np.stack([rs.permutation(e)[:k] for _ in range(t)]).astype(np.int32)
  valid_T = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 1], bool)
  stats = load_statistics(jnp.asarray(logits_TE), jnp.asarray(experts_TK), jnp.asarray(valid_T))
  fraction_E, prob_E = np.asarray(stats["expert_fraction"]), np.asarray(stats["router_prob"])
  np.testing.assert_allclose(fraction_E.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(prob_E.sum(), 1.0, rtol=1e-6)
  counts = np.bincount(experts_TK[valid_T].ravel(), minlength=e)
  np.testing.assert_allclose(fraction_E, counts / counts.sum(), rtol=1e-6)
  softmax = np.exp(logits_TE) / np.exp(logits_TE).sum(-1, keepdims=True)
  np.testing.assert_allclose(prob_E, softmax[valid_T].mean(0), rtol=1e-5)
  # Whatever the invalid (padding) tokens route to or score, the statistics do not move.
  experts2, logits2 = experts_TK.copy(), logits_TE.copy()
  experts2[~valid_T] = np.array([3, 2])
  logits2[~valid_T] = 50.0 * rs.randn((~valid_T).sum(), e)
  stats2 = load_statistics(jnp.asarray(logits2), jnp.asarray(experts2), jnp.asarray(valid_T))
  np.testing.assert_allclose(np.asarray(stats2["expert_fraction"]), fraction_E, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(stats2["router_prob"]), prob_E, rtol=1e-6)


def test_swiglu_custom_gradient_matches_autodiff():
  from llama4_jax.ops.moe import swiglu
  rs = np.random.RandomState(0)
  h = jnp.asarray(3 * rs.randn(5, 7, 2, 9).astype(np.float32))
  w = jnp.asarray(rs.randn(5, 7, 9).astype(np.float32))
  plain = lambda h: jnp.sum(w * (h[..., 0, :] / (1 + jnp.exp(-h[..., 0, :]))) * h[..., 1, :])  # noqa: E731
  custom = lambda h: jnp.sum(w * swiglu(h))  # noqa: E731
  np.testing.assert_allclose(custom(h), plain(h), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(custom)(h)), np.asarray(jax.grad(plain)(h)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_capacity_dispatch_drops_exactly_the_excess_in_token_order(factor):
  from llama4_jax.ops.moe import capacity, moe_capacity
  rs = np.random.RandomState(5)
  t, d, e, k, f = 24, 6, 4, 2, 5
  g, u, dn = _weights(rs, e, d, f)
  x = jnp.asarray(rs.randn(t, d).astype(np.float32))
  scores, experts, _ = route(x, jnp.asarray(rs.randn(d, e).astype(np.float32)), k)
  y, dropped = jax.jit(lambda *a: moe_capacity(*a, capacity_factor=factor))(
      x, scores, experts, jnp.stack([g, u], axis=2), dn)
  cap = capacity(t * k, e, factor)
  flat = np.asarray(experts).reshape(-1)
  keep = np.ones_like(flat, bool)
  for j in range(e):
    keep[np.flatnonzero(flat == j)[cap:]] = False
  assert int(dropped) == int((~keep).sum())
  assert (int(dropped) > 0) == (factor < 2.0)  # factor E / k = 2 reserves room for every assignment
  kept = jnp.where(jnp.asarray(keep.reshape(t, k)), scores, 0)
  np.testing.assert_allclose(np.asarray(y), np.asarray(moe_dense(x, kept, experts, g, u, dn)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t, e, capacity_factor, block, runs", [(3, 2, 0.5, None, 1), (6, 3, 3.0, 2, 0)])
def test_blocked_at_the_edges_of_the_overflow_matches_dense(t, e, capacity_factor, block, runs):
  """Every assignment on one expert. Three over two experts at half the mean group: capacity 1, the other two
  overflow in fewer blocks than OVERFLOW_GROUP (a group's product is wider than all the assignments), so they go
  through the single blocks. Six over three at three times the mean: a capacity no group can exceed, no overflow
  runs at all. Outputs and gradients equal the dense oracle in both."""
  rs = np.random.RandomState(5)
  d, f = 8, 4
  x_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  scores_TK = jnp.asarray(rs.rand(t, 1).astype(np.float32))
  experts_TK = jnp.full((t, 1), e - 1, jnp.int32)
  gate, up, down = _weights(rs, e, d, f)
  sizes = jnp.bincount(experts_TK[:, 0], length=e)
  cap = blocked_capacity(t, e, capacity_factor)
  assert int(overflow_runs(sizes, cap, block or 8)[-1]) == runs
  blocked = _fused(functools.partial(moe_blocked, capacity_factor=capacity_factor, block=block))

  def vjp(impl):
    return jax.vjp(lambda x, g, u, dn: impl(x, scores_TK, experts_TK, g, u, dn), x_TD, gate, up, down)

  (out_b, pull_b), (out_d, pull_d) = vjp(blocked), vjp(moe_dense)
  np.testing.assert_allclose(np.asarray(out_b), np.asarray(out_d), rtol=1e-5, atol=1e-5)
  w_TD = jnp.asarray(rs.randn(t, d).astype(np.float32))
  for gb, gd in zip(pull_b(w_TD), pull_d(w_TD)):
    np.testing.assert_allclose(np.asarray(gb), np.asarray(gd), rtol=1e-5, atol=1e-5)
