"""The decoder end to end on the tiny config: parameter layout, packed-row isolation, remat / MoE / dtype variants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from llama4_jax.model import apply, forward, init_params, param_logical_axes, param_shapes
from tests.conftest import tiny_config


def random_params(cfg, seed=0):
  """Random parameters with the model's shapes, built in numpy (`init_params` compiles one RNG kernel per array,
  about 10 s for the tiny model on 2 CPU cores); norm scales near 1 so that they are exercised too."""
  rs = np.random.RandomState(seed)

  def make(path, s):
    if "scale" in jax.tree_util.keystr(path):
      return jnp.asarray(1 + 0.1 * rs.randn(*s.shape), s.dtype)
    return jnp.asarray(0.1 * rs.randn(*s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(make, param_shapes(cfg))


def _expected_shapes(cfg):
  nb, d, h, g, k = cfg.num_blocks, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  e, f, fm, v = cfg.num_local_experts, cfg.intermediate_size, cfg.intermediate_size_mlp, cfg.vocab_size
  blocks = {}
  for j in range(cfg.block_size):
    layer = {"attn": {"q": (nb, d, h, k), "k": (nb, d, g, k), "v": (nb, d, g, k), "o": (nb, h, k, d)},
             "attn_norm": {"scale": (nb, d)}, "ffn_norm": {"scale": (nb, d)}}
    if cfg.is_moe_layer(j):
      layer["moe"] = {"router": (nb, d, e), "gate_up": (nb, e, d, 2, f), "down": (nb, e, f, d),
                      "shared": {"gate_up": (nb, d, 2, f), "down": (nb, f, d)}}
    else:
      layer["mlp"] = {"gate_up": (nb, d, 2, fm), "down": (nb, fm, d)}
    blocks[f"layer_{j}"] = layer
  return {"blocks": blocks, "embed": (v, d), "final_norm": {"scale": (d,)}, "lm_head": (d, v)}


def test_init_params_shapes_have_leading_block_axis():
  cfg = tiny_config(num_hidden_layers=8)  # 2 blocks of 4 layer kinds: RoPE/NoPE x dense/MoE
  shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
  got = jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)
  assert cfg.num_blocks == 2
  assert got == _expected_shapes(cfg)
  assert jax.tree_util.tree_map(lambda s: tuple(s.shape), param_shapes(cfg)) == got


def test_init_params_values():
  cfg = tiny_config(no_rope_layer_interval=1, interleave_moe_layer_step=1, num_hidden_layers=3)  # block of 1 layer
  # An 'rbg' key: any key type works, and it compiles far faster on CPU than one threefry kernel per array.
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0, impl="rbg"))
  assert jax.tree_util.tree_map(lambda x: tuple(x.shape), params) == _expected_shapes(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  layer = params["blocks"]["layer_0"]
  np.testing.assert_array_equal(np.asarray(layer["attn_norm"]["scale"]), 1.0)
  np.testing.assert_array_equal(np.asarray(params["final_norm"]["scale"]), 1.0)
  q = np.asarray(layer["attn"]["q"])
  assert not np.allclose(q[0], q[1]) and not np.allclose(q[1], q[2])  # each scanned layer gets its own key
  np.testing.assert_allclose(np.asarray(layer["moe"]["gate_up"]).std(), cfg.initializer_range, rtol=0.1)


def test_param_logical_axes():
  cfg = tiny_config(num_hidden_layers=8)
  axes = param_logical_axes(cfg)
  shapes = param_shapes(cfg)
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  for path, spec in jax.tree_util.tree_flatten_with_path(axes["blocks"], is_leaf=is_spec)[0]:
    assert isinstance(spec, PartitionSpec)
    assert spec[0] == "layers", path
    assert "layers" not in spec[1:], path
  for path, spec in jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_spec)[0]:
    shape = functools.reduce(lambda t, key: t[key.key], path, shapes).shape
    assert len(spec) == len(shape), path
  assert "layers" not in tuple(axes["embed"]) and tuple(axes["embed"]) == ("vocab", "embed")
  assert tuple(axes["blocks"]["layer_1"]["moe"]["gate_up"]) == ("layers", "experts", "embed", None, "expert_mlp")
  assert tuple(axes["blocks"]["layer_0"]["attn"]["q"]) == ("layers", "embed", "heads", "head_dim")


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_config()
  return cfg, random_params(cfg)


def _packed(cfg, n):
  """Two documents of n tokens packed into one row: (docs [2, n], tokens [1, 2n], positions, segment ids)."""
  docs = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, n))
  tokens = docs.reshape(1, 2 * n)
  positions = np.tile(np.arange(n), 2)[None]
  segments = np.repeat([1, 2], n)[None]
  return docs, tokens, positions, segments


N = 12  # longer than attention_chunk_size (8), and positions pass floor_scale (4) so temperature tuning is active


def test_packed_documents_match_separate_runs(tiny):
  cfg, params = tiny
  docs, tokens, positions, segments = _packed(cfg, N)
  packed = np.asarray(forward(cfg, params, tokens, positions, segments))
  alone = np.asarray(forward(cfg, params, docs))  # each document as its own row
  assert packed.shape == (1, 2 * N, cfg.vocab_size) and packed.dtype == np.float32
  np.testing.assert_allclose(packed[0, :N], alone[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, N:], alone[1], rtol=1e-5, atol=1e-5)

  changed = tokens.copy()
  changed[0, 3] = (changed[0, 3] + 1) % cfg.vocab_size
  after = np.asarray(forward(cfg, params, changed, positions, segments))
  np.testing.assert_allclose(after[0, N:], packed[0, N:], rtol=1e-5, atol=1e-5)  # document 2 is untouched
  np.testing.assert_allclose(after[0, :3], packed[0, :3], rtol=1e-5, atol=1e-5)  # causal: earlier slots too
  assert np.abs(after[0, 3:N] - packed[0, 3:N]).max() > 1e-3  # but document 1 did change


def _loss_and_grads(cfg, params, tokens, weights):
  def loss(p):
    logits = apply(cfg, p, tokens)[0]
    return jnp.sum(logits * weights), logits

  # Rematerialisation is decided in HLO; LLVM optimisation level 0 only halves the CPU compile time.
  lowered = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params)
  return lowered.compile({"xla_backend_optimization_level": 0})(params), lowered.as_text()


def test_remat_policies_match_no_remat():
  # One block of two layers (RoPE + dense, NoPE + MoE) and the dense MoE oracle keep the three gradient compiles
  # short; remat does not interact with the dispatch path.
  cfg = tiny_config(no_rope_layer_interval=2, num_hidden_layers=2, moe_impl="dense")
  params = random_params(cfg, seed=1)
  rs = np.random.RandomState(2)
  tokens = jnp.asarray(rs.randint(0, cfg.vocab_size, (2, 10)), jnp.int32)
  weights = jnp.asarray(rs.randn(2, 10, cfg.vocab_size).astype(np.float32))
  ((_, ref_logits), ref_grads), ref_hlo = _loss_and_grads(cfg, params, tokens, weights)
  assert float(jnp.abs(ref_grads["blocks"]["layer_1"]["moe"]["router"]).max()) > 0
  for policy in ("full", "dots"):
    ((_, logits), grads), hlo = _loss_and_grads(cfg.replace(remat_policy=policy), params, tokens, weights)
    # The policy really recomputes: softmax exponentials always, matmuls only under 'full'.
    assert hlo.count("exponential") > ref_hlo.count("exponential"), policy
    assert (hlo.count("dot_general") > ref_hlo.count("dot_general")) == (policy == "full"), policy
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
    for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree_util.tree_leaves(ref_grads)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5,
                                 err_msg=f"{policy} {jax.tree_util.keystr(path)}")


def test_dense_and_blocked_moe_equal_sort(tiny):
  cfg, params = tiny
  docs, _, _, _ = _packed(cfg, N)  # same shapes as above: the 'sort' forward is already compiled
  sort = np.asarray(forward(cfg, params, docs))
  dense = np.asarray(forward(cfg.replace(moe_impl="dense"), params, docs))
  blocked = np.asarray(forward(cfg.replace(moe_impl="blocked"), params, docs))
  np.testing.assert_allclose(dense, sort, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(blocked, sort, rtol=1e-5, atol=1e-5)
  # The banded chunked attention (attention_impl="xla", the default) against the dense masked reference, on packed rows longer than a chunk.
  assert docs.shape[1] > cfg.attention_chunk_size and cfg.attention_impl == "xla"
  dense_attention = np.asarray(forward(cfg.replace(attention_impl="dense"), params, docs))
  np.testing.assert_allclose(dense_attention, sort, rtol=1e-5, atol=1e-5)


def test_long_rows_use_query_blocked_global_attention(tiny, monkeypatch):
  """Global layers of rows past 2 * QUERY_BLOCK run the memory-linear blocked attention: same logits and gradients
  as the dense reference on packed rows (the block is shrunk so the tiny rows take that path)."""
  import llama4_jax.model.attention as attention_module
  cfg, params = tiny
  _, tokens, positions, segments = _packed(cfg, N)
  calls = []
  original = attention_module.query_blocked_attention
  monkeypatch.setattr(attention_module, "QUERY_BLOCK", 5)
  monkeypatch.setattr(attention_module, "query_blocked_attention",
                      lambda *a, **k: calls.append(1) or original(*a, block=5, **k))

  def loss(p, c):
    logits, _ = apply(c, p, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    return jnp.sum(logits ** 2) * 1e-3, logits

  (_, blocked), g_blocked = jax.value_and_grad(loss, has_aux=True)(params, cfg)
  assert calls, "the blocked path was not taken"
  (_, dense), g_dense = jax.value_and_grad(loss, has_aux=True)(params, cfg.replace(attention_impl="dense"))
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(dense), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g_blocked), jax.tree_util.tree_leaves(g_dense)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_short_rows_skip_the_keys_past_each_query_block(tiny, monkeypatch):
  """Rows within the dense path run `causal_self_attention` (query blocks against the keys up to their end; the
  block is shrunk so that the tiny rows span several): same logits and gradients as the dense reference."""
  import llama4_jax.model.attention as attention_module
  cfg, params = tiny
  _, tokens, positions, segments = _packed(cfg, N)
  calls = []
  original = attention_module.causal_self_attention
  monkeypatch.setattr(attention_module, "causal_self_attention",
                      lambda *a, **k: calls.append(a[0].shape[1]) or original(*a, block=3, **k))

  def loss(p, c):
    logits, _ = apply(c, p, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    return jnp.sum(logits ** 2) * 1e-3, logits

  (_, blocked), g_blocked = jax.value_and_grad(loss, has_aux=True)(params, cfg)
  assert calls and all(length > 3 for length in calls), calls
  (_, dense), g_dense = jax.value_and_grad(loss, has_aux=True)(params, cfg.replace(attention_impl="dense"))
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(dense), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g_blocked), jax.tree_util.tree_leaves(g_dense)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_bfloat16_activations(tiny):
  cfg, params = tiny
  docs, _, _, _ = _packed(cfg, N)
  fp32 = np.asarray(forward(cfg, params, docs))
  bf16 = forward(cfg.replace(dtype="bfloat16"), params, docs)
  assert bf16.dtype == jnp.float32
  bf16 = np.asarray(bf16)
  assert np.all(np.isfinite(bf16))
  scale = np.abs(fp32).max()
  assert np.abs(bf16 - fp32).max() < 0.05 * scale
  assert np.abs(bf16 - fp32).max() > 0  # it really computed in bfloat16


def test_forward_rejects_1d_tokens(tiny):
  cfg, params = tiny
  with pytest.raises(ValueError, match="batch, length"):
    forward(cfg, params, np.arange(5))


def test_positions_default_to_restarting_per_segment(tiny):
  from llama4_jax.model.transformer import positions_from_segments
  seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5]], np.int32)
  np.testing.assert_array_equal(np.asarray(positions_from_segments(jnp.asarray(seg))),
                                [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
  cfg, params = tiny
  docs, tokens, positions, segments = _packed(cfg, N)
  implied = np.asarray(forward(cfg, params, tokens, None, segments))
  # The two calls compile different graphs (positions computed in the graph or passed in), so XLA may fuse and round
  # differently: equal to float32 rounding, while positions that do not restart per segment move the logits far more.
  np.testing.assert_allclose(implied, np.asarray(forward(cfg, params, tokens, positions, segments)), atol=1e-5, rtol=0)
  running = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  assert np.abs(implied - np.asarray(forward(cfg, params, tokens, running, segments))).max() > 1e-3


@pytest.mark.parametrize("length", [N, 5])
def test_rows_without_positions_or_segments_take_the_static_path_exactly(tiny, length):
  """Tokens alone (one document per row from slot 0) compile without the chunked layers' per-batch `lax.cond` and
  give the logits and gradients of the same rows with their positions and segment ids spelled out."""
  cfg, params = tiny
  tokens = jnp.asarray(np.random.RandomState(length).randint(0, cfg.vocab_size, (2, length)))
  positions = jnp.asarray(np.broadcast_to(np.arange(length, dtype=np.int32), (2, length)))
  segments = jnp.ones((2, length), jnp.int32)
  weights = jnp.asarray(np.random.RandomState(1).randn(2, length, cfg.vocab_size), jnp.float32)

  def loss(p, *rows):
    logits = apply(cfg, p, tokens, *rows)[0]
    return jnp.sum(logits * weights), logits

  grads = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, bare), g_bare = grads(params)
  (_, spelled), g_spelled = grads(params, positions, segments)
  np.testing.assert_allclose(np.asarray(bare), np.asarray(spelled), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g_bare), jax.tree_util.tree_leaves(g_spelled)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  conds = lambda *rows: str(jax.make_jaxpr(jax.grad(lambda p: loss(p, *rows)[0]))(params)).count("cond[")  # noqa
  assert conds() == 0
  if length > cfg.attention_chunk_size:
    assert conds(positions, segments) > 0


def test_pallas_grouped_matmul_moe_equals_sort(tiny):
  cfg, params = tiny
  docs, _, _, _ = _packed(cfg, N)
  sort = np.asarray(forward(cfg, params, docs))
  pallas = np.asarray(forward(cfg.replace(moe_impl="pallas", kernel_interpret=True), params, docs))
  np.testing.assert_allclose(pallas, sort, rtol=1e-5, atol=1e-5)


def test_pallas_flash_attention_equals_reference_on_packed_rows(tiny):
  cfg, params = tiny
  _, tokens, positions, segments = _packed(cfg, N)  # two documents; the second starts at slot 12 (not 0 mod 8)
  ref = np.asarray(forward(cfg.replace(attention_impl="dense"), params, tokens, positions, segments))
  pallas = np.asarray(forward(cfg.replace(attention_impl="pallas", kernel_interpret=True), params, tokens, positions,
                              segments))
  np.testing.assert_allclose(pallas, ref, rtol=1e-5, atol=1e-5)


def test_pallas_kernels_gradients_equal_reference(tiny):
  cfg, params = tiny
  _, tokens, positions, segments = _packed(cfg, N)

  def loss(p, c):
    return jnp.sum(jnp.sin(apply(c, p, tokens, positions, segments)[0]))

  ref = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg.replace(attention_impl="dense"))
  kern = jax.jit(jax.grad(loss), static_argnums=1)(
      params, cfg.replace(attention_impl="pallas", moe_impl="pallas", kernel_interpret=True))
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(kern)[0], jax.tree_util.tree_leaves(ref)):
    scale = float(np.abs(np.asarray(r)).max())  # gradients reach ~30 here: compare at 1e-5 of each leaf's scale
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))
