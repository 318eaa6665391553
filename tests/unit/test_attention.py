"""Masks (spec 4.5), temperature tuning (4.7) and the reference grouped-query attention (4.1) against brute force."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama4_jax.ops import attention as attention_ops
from llama4_jax.ops.attention import (attention_mask, causal_self_attention, dot_product_attention, masked_attention,
                                      self_attention_masks, temperature_scale)


def _packed_row(doc_lengths, pad=0):
  """segment ids 1, 2, ... per document (0 for trailing padding) and positions restarting at 0 per document."""
  segments = [s + 1 for s, n in enumerate(doc_lengths) for _ in range(n)] + [0] * pad
  positions = [p for n in doc_lengths for p in range(n)] + list(range(pad))
  return np.array(segments, np.int32), np.array(positions, np.int32)


def _brute_force_mask(segments_L, chunk_size):
  """mask[i, j] from slot indices only: causal, same document, same chunk counted from the document's first slot."""
  l = len(segments_L)
  start = [min(s for s in range(l) if segments_L[s] == segments_L[i]) for i in range(l)]
  mask = np.zeros((l, l), bool)
  for i in range(l):
    for j in range(l):
      ok = j <= i and segments_L[i] == segments_L[j]
      if chunk_size is not None:
        ok = ok and (i - start[i]) // chunk_size == (j - start[j]) // chunk_size
      mask[i, j] = ok
  return mask


ROWS = [((20,), 0), ((5, 11, 3), 1), ((9, 4), 7), ((1, 1, 8), 10)]  # (document lengths, trailing padding): 20 slots


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 8])
def test_attention_mask_matches_brute_force(chunk_size):
  # Trailing padding is one more "document" of segment 0 whose positions restart at 0.
  rows = [_packed_row(docs, pad) for docs, pad in ROWS]
  l = len(rows[0][0])
  segments_BL = np.stack([s for s, _ in rows])
  positions_BL = np.stack([p for _, p in rows])
  index_BL = np.broadcast_to(np.arange(l, dtype=np.int32), segments_BL.shape)
  mask = np.asarray(attention_mask(jnp.asarray(index_BL), jnp.asarray(index_BL), jnp.asarray(segments_BL),
                                   jnp.asarray(segments_BL), jnp.asarray(positions_BL), jnp.asarray(positions_BL),
                                   chunk_size=chunk_size))
  expected = np.stack([_brute_force_mask(s, chunk_size) for s in segments_BL])
  assert mask.dtype == bool and mask.shape == (len(rows), l, l)
  np.testing.assert_array_equal(mask, expected)


def test_self_attention_masks_match_brute_force():
  segments_L, positions_L = _packed_row((13, 10))
  global_BLL, chunked_BLL = self_attention_masks(jnp.asarray(positions_L[None]), jnp.asarray(segments_L[None]), 4)
  np.testing.assert_array_equal(np.asarray(global_BLL[0]), _brute_force_mask(segments_L, None))
  np.testing.assert_array_equal(np.asarray(chunked_BLL[0]), _brute_force_mask(segments_L, 4))
  same_BLL, same2_BLL = self_attention_masks(jnp.asarray(positions_L[None]), jnp.asarray(segments_L[None]), None)
  np.testing.assert_array_equal(np.asarray(same_BLL), np.asarray(same2_BLL))
  np.testing.assert_array_equal(np.asarray(same_BLL), np.asarray(global_BLL))


def test_token_at_chunk_boundary_sees_only_itself():
  c = 8
  l = 2 * c + 3
  positions_BL = jnp.arange(l, dtype=jnp.int32)[None]
  global_BLL, chunked_BLL = self_attention_masks(positions_BL, jnp.ones((1, l), jnp.int32), c)
  for p in (c, 2 * c):
    assert np.asarray(chunked_BLL[0, p]).nonzero()[0].tolist() == [p]
    assert int(np.asarray(global_BLL[0, p]).sum()) == p + 1
  # The last token of a chunk sees its whole chunk; chunks are fixed blocks, not a sliding window.
  assert np.asarray(chunked_BLL[0, 2 * c - 1]).nonzero()[0].tolist() == list(range(c, 2 * c))
  assert np.asarray(chunked_BLL[0, 2 * c + 2]).nonzero()[0].tolist() == [2 * c, 2 * c + 1, 2 * c + 2]


def test_chunks_align_to_each_document_start():
  # Second document starts at slot 5; its position C (slot 5 + C) must see only itself.
  c = 4
  segments_L, positions_L = _packed_row((5, 2 * c + 1))
  _, chunked_BLL = self_attention_masks(jnp.asarray(positions_L[None]), jnp.asarray(segments_L[None]), c)
  assert np.asarray(chunked_BLL[0, 5 + c]).nonzero()[0].tolist() == [5 + c]
  assert np.asarray(chunked_BLL[0, 5 + c - 1]).nonzero()[0].tolist() == list(range(5, 5 + c))


def test_temperature_scale_sample_values():
  p = np.array([0, 100, 8190, 8191, 16383, 65535, 131071, 1048575, 10485759], np.int32)
  scale = np.asarray(temperature_scale(jnp.asarray(p[None]), 8192.0, 0.1))[0]
  assert scale.dtype == np.float32
  expected = 1 + 0.1 * np.log(np.floor((p.astype(np.float64) + 1) / 8192) + 1)
  np.testing.assert_allclose(scale, expected, rtol=1e-6)
  # Rounded sample values quoted in spec 4.7.
  quoted = {8190: 1.0, 8191: 1.0693, 16383: 1.110, 65535: 1.220, 131071: 1.283, 1048575: 1.486, 10485759: 1.716}
  for pos, value in quoted.items():
    assert abs(scale[p.tolist().index(pos)] - value) < 1e-3, pos
  np.testing.assert_allclose(scale[3], 1 + 0.1 * math.log(2), rtol=1e-6)


def test_temperature_scale_is_identity_below_floor():
  scale = np.asarray(temperature_scale(jnp.arange(8191, dtype=jnp.int32)[None], 8192.0, 0.1))
  assert np.all(scale == 1.0)


def _naive_attention(q_BLHK, k_BSGK, v_BSGK, mask_BLS, scale):
  b, l, h, kd = q_BLHK.shape
  g = k_BSGK.shape[2]
  out = np.zeros((b, l, h, kd))
  for bi in range(b):
    for hi in range(h):
      gi = hi // (h // g)  # consecutive groups of H/G query heads share a KV head
      for i in range(l):
        allowed = mask_BLS[bi, i]
        if not allowed.any():
          continue
        logits = np.array([q_BLHK[bi, i, hi] @ k_BSGK[bi, s, gi] for s in range(k_BSGK.shape[1])]) * scale
        logits = np.where(allowed, logits, -np.inf)
        w = np.exp(logits - logits.max())
        w /= w.sum()
        out[bi, i, hi] = w @ v_BSGK[bi, :, gi]
  return out


_attention = jax.jit(dot_product_attention, static_argnums=4)  # one compile instead of one per primitive


@pytest.mark.parametrize("h, g", [(6, 2), (4, 4), (6, 1)])
def test_dot_product_attention_matches_naive_gqa(h, g):
  rs = np.random.RandomState(h * 10 + g)
  b, l, s, kd = 2, 4, 6, 8
  q = rs.randn(b, l, h, kd).astype(np.float32)
  k = rs.randn(b, s, g, kd).astype(np.float32)
  v = rs.randn(b, s, g, kd).astype(np.float32)
  mask = rs.rand(b, l, s) < 0.6
  mask[..., 0] = True  # every row sees something
  out = np.asarray(_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), kd ** -0.5))
  assert out.shape == (b, l, h, kd) and out.dtype == np.float32
  np.testing.assert_allclose(out, _naive_attention(q, k, v, mask, kd ** -0.5), rtol=1e-5, atol=1e-5)


def test_fully_masked_row_gives_no_nan():
  rs = np.random.RandomState(3)
  b, l, h, g, kd = 1, 5, 4, 2, 8
  q = rs.randn(b, l, h, kd).astype(np.float32)
  k = rs.randn(b, l, g, kd).astype(np.float32)
  v = rs.randn(b, l, g, kd).astype(np.float32)
  mask = np.tril(np.ones((l, l), bool))[None].copy()
  mask[0, 2] = False  # a padding row: sees nothing
  out = np.asarray(_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), kd ** -0.5))
  assert np.all(np.isfinite(out))
  rows = [0, 1, 3, 4]
  np.testing.assert_allclose(out[:, rows], _naive_attention(q, k, v, mask, kd ** -0.5)[:, rows], rtol=1e-5,
                             atol=1e-5)


def _chunk_test_rows(b, l, c, layout):
  """(positions, segment ids) [B, L]: 'packed' (a second document from l // 3, not on a chunk boundary),
  'unpacked' (one document per row) or 'aligned' (documents of whole chunks); the last two slots are padding."""
  cut = min(l, {"packed": l // 3, "unpacked": l, "aligned": c}[layout])
  seg = np.ones((b, l), np.int32)
  seg[:, cut:] = 2
  seg[:, l - 2:] = 0  # trailing padding
  pos = np.concatenate([np.arange(cut), np.arange(l - cut)])[None].repeat(b, 0).astype(np.int32)
  return pos, seg


@pytest.mark.parametrize("b,l,h,g,k,c", [(2, 21, 4, 2, 8, 8), (1, 37, 6, 3, 6, 5), (2, 64, 4, 4, 8, 16),
                                         (1, 10, 2, 1, 4, 16)])
@pytest.mark.parametrize("long_row_path", [False, True])
@pytest.mark.parametrize("layout", ["packed", "unpacked", "aligned"])
def test_banded_chunked_attention_equals_dense_reference(b, l, h, g, k, c, long_row_path, layout, monkeypatch):
  """Values and gradients against the dense reference, through the band (packed) and the own-block shortcut."""
  from llama4_jax.ops import attention as attention_ops
  from llama4_jax.ops.attention import chunked_self_attention
  if long_row_path:  # rows count as long past 2 * QUERY_BLOCK: the chunk-at-a-time (mapped, rematerialised) path
    monkeypatch.setattr(attention_ops, "QUERY_BLOCK", 2)
  rs = np.random.RandomState(l)
  q, kk, v = (jnp.asarray(rs.randn(b, l, n, k), jnp.float32) for n in (h, g, g))
  pos, seg = _chunk_test_rows(b, l, c, layout)
  _, chunked = self_attention_masks(jnp.asarray(pos), jnp.asarray(seg), c)
  valid = jnp.asarray(seg != 0)[:, :, None, None]

  def ref(q, kk, v):
    return jnp.sum(jnp.where(valid, dot_product_attention(q, kk, v, chunked, 0.3), 0) ** 2)

  def banded(q, kk, v):
    return jnp.sum(jnp.where(valid, chunked_self_attention(q, kk, v, jnp.asarray(pos), jnp.asarray(seg), c, 0.3),
                             0) ** 2)

  np.testing.assert_allclose(banded(q, kk, v), ref(q, kk, v), rtol=1e-5)
  for gb, gr in zip(jax.grad(banded, argnums=(0, 1, 2))(q, kk, v), jax.grad(ref, argnums=(0, 1, 2))(q, kk, v)):
    np.testing.assert_allclose(np.asarray(gb), np.asarray(gr), rtol=1e-4, atol=1e-5)
  out = chunked_self_attention(q, kk, v, jnp.asarray(pos), jnp.asarray(seg), c, 0.3)
  assert np.isfinite(np.asarray(out)).all()
  if layout == "unpacked":  # every row's padding slots, even the ones visible to nothing, keep their own output
    np.testing.assert_allclose(np.asarray(out), np.asarray(dot_product_attention(q, kk, v, chunked, 0.3)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout, sees", [("packed", True), ("unpacked", False), ("aligned", False)])
def test_chunked_attention_takes_the_own_block_shortcut_only_when_exact(layout, sees):
  """The band's first half is needed exactly when some query sees a key of the previous block: a document that
  continues past a block boundary inside its chunk. Unpacked rows and documents of whole chunks skip it."""
  from llama4_jax.ops.attention import _blocks, sees_previous_block
  b, l, c = 2, 32, 8
  pos, seg = _chunk_test_rows(b, l, c, layout)
  n = l // c
  index = np.broadcast_to(np.arange(l, dtype=np.int32), (b, l))
  kv = lambda x: _blocks(jnp.asarray(x), n, c).reshape(b * n, 2 * c)  # noqa: E731
  band = attention_mask(index.reshape(b * n, c), kv(index + 1) - 1, seg.reshape(b * n, c), kv(seg),
                        pos.reshape(b * n, c), kv(pos), chunk_size=c).reshape(b, n, c, 2 * c)
  assert bool(sees_previous_block(band, c)) is sees
  # The same answer as the dense mask: does any query see a key of the block before its own?
  _, dense = self_attention_masks(jnp.asarray(pos), jnp.asarray(seg), c)
  q_block, k_block = np.arange(l)[:, None] // c, np.arange(l)[None, :] // c
  assert bool(np.any(np.asarray(dense) & (k_block == q_block - 1))) is sees


@pytest.mark.parametrize("l,c", [(32, 8), (29, 8), (6, 8)])
@pytest.mark.parametrize("long_row_path", [False, True])
def test_chunked_attention_told_the_rows_are_aligned_skips_the_cond_and_agrees(l, c, long_row_path, monkeypatch):
  """`aligned=True` (one document per row from slot 0, as the model knows when no positions or segment ids are
  given) takes the own block with no `lax.cond` and gives the values and gradients of the per-batch decision and of
  the dense reference, also for rows that end inside a chunk."""
  from llama4_jax.ops import attention as attention_ops
  from llama4_jax.ops.attention import chunked_self_attention
  if long_row_path:
    monkeypatch.setattr(attention_ops, "QUERY_BLOCK", 2)
  b, h, g, k = 2, 4, 2, 8
  rs = np.random.RandomState(l)
  q, kk, v = (jnp.asarray(rs.randn(b, l, n, k), jnp.float32) for n in (h, g, g))
  pos = jnp.asarray(np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)))
  seg = jnp.ones((b, l), jnp.int32)
  _, chunked = self_attention_masks(pos, seg, c)

  def loss(attend):
    return lambda q, kk, v: jnp.sum(attend(q, kk, v) ** 2)

  static = lambda q, kk, v: chunked_self_attention(q, kk, v, pos, seg, c, 0.3, aligned=True)  # noqa: E731
  decided = lambda q, kk, v: chunked_self_attention(q, kk, v, pos, seg, c, 0.3)  # noqa: E731
  dense = lambda q, kk, v: dot_product_attention(q, kk, v, chunked, 0.3)  # noqa: E731
  for other in (decided, dense):
    np.testing.assert_allclose(np.asarray(static(q, kk, v)), np.asarray(other(q, kk, v)), rtol=1e-5, atol=1e-6)
    for a, r in zip(jax.grad(loss(static), argnums=(0, 1, 2))(q, kk, v),
                    jax.grad(loss(other), argnums=(0, 1, 2))(q, kk, v)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-5)
  conds = lambda f: str(jax.make_jaxpr(jax.grad(loss(f)))(q, kk, v)).count("cond[")  # noqa: E731
  assert conds(static) == 0
  if l > c:  # rows past one chunk: the per-batch path does decide
    assert conds(decided) > 0


@pytest.mark.parametrize("b,l,h,g,k,block", [(2, 53, 4, 2, 8, 16), (1, 40, 6, 3, 6, 8), (1, 9, 2, 1, 4, 16)])
def test_query_blocked_global_attention_equals_dense_reference(b, l, h, g, k, block):
  from llama4_jax.ops.attention import query_blocked_attention
  rs = np.random.RandomState(l + block)
  q, kk, v = (jnp.asarray(rs.randn(b, l, n, k), jnp.float32) for n in (h, g, g))
  seg = np.ones((b, l), np.int32)
  seg[:, l // 3:] = 2
  seg[:, l - 2:] = 0  # trailing padding
  pos = np.concatenate([np.arange(l // 3), np.arange(l - l // 3)])[None].repeat(b, 0).astype(np.int32)
  global_mask, _ = self_attention_masks(jnp.asarray(pos), jnp.asarray(seg), None)
  valid = jnp.asarray(seg != 0)[:, :, None, None]

  def ref(q, kk, v):
    return jnp.sum(jnp.where(valid, dot_product_attention(q, kk, v, global_mask, 0.3), 0) ** 2)

  def blocked(q, kk, v):
    return jnp.sum(jnp.where(valid, query_blocked_attention(q, kk, v, jnp.asarray(seg), 0.3, block), 0) ** 2)

  out = query_blocked_attention(q, kk, v, jnp.asarray(seg), 0.3, block)
  assert out.shape == (b, l, h, k) and np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(np.asarray(jnp.where(valid, out, 0)),
                             np.asarray(jnp.where(valid, dot_product_attention(q, kk, v, global_mask, 0.3), 0)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(blocked(q, kk, v), ref(q, kk, v), rtol=1e-5)
  for gb, gr in zip(jax.grad(blocked, argnums=(0, 1, 2))(q, kk, v), jax.grad(ref, argnums=(0, 1, 2))(q, kk, v)):
    np.testing.assert_allclose(np.asarray(gb), np.asarray(gr), rtol=1e-4, atol=1e-5)


def test_query_blocked_attention_keeps_memory_linear_in_length():
  """The compiled forward + backward's temporary memory grows ~linearly with the row (the dense reference's
  grows with its square)."""
  from llama4_jax.ops.attention import query_blocked_attention

  def temp_bytes(fn, l):
    q = jax.ShapeDtypeStruct((1, l, 2, 8), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, l), jnp.int32)
    loss = lambda q, seg: jnp.sum(fn(q, q, q, seg) ** 2)  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(q, seg).compile().memory_analysis().temp_size_in_bytes

  def dense(q, k, v, seg):
    pos = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), seg.shape)
    return dot_product_attention(q, k, v, self_attention_masks(pos, seg, None)[0], 0.3)

  blocked = lambda q, k, v, seg: query_blocked_attention(q, k, v, seg, 0.3, 64)  # noqa: E731
  small, large = (temp_bytes(blocked, l) for l in (1024, 4096))
  assert large < 6 * small  # 4x the length: linear growth (the dense one grows ~16x)
  assert temp_bytes(dense, 4096) > 10 * temp_bytes(dense, 1024)


# The probabilities kept (small matrices, or asked for), or recomputed (large matrices).
@pytest.mark.parametrize("saved_probs_max, keep_probs", [(1 << 17, False), (0, False), (0, True)])
@pytest.mark.parametrize("small_transpose", [0, 1 << 17])  # dk / dv in the transposed form, or from a copy
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_masked_attention_gradient_equals_autodiff_of_the_formula(dtype, tol, small_transpose, saved_probs_max,
                                                                  keep_probs, monkeypatch):
  """The hand-written backward against autodiff of softmax(where(mask, q k^T s, min)) v, with a fully masked row
  (padding: uniform weights, no gradient through the constant logits) and leading batch dims; both forms of the
  key and value gradients (small matrices from a materialised transpose, large ones as they lie) and both
  residuals (the probabilities, or each row's maximum and sum with the probabilities recomputed)."""
  monkeypatch.setattr(attention_ops, "SMALL_TRANSPOSE", small_transpose)
  monkeypatch.setattr(attention_ops, "SAVED_PROBS_MAX", saved_probs_max)
  rs = np.random.RandomState(3)
  n1, n2, m, s, k = 2, 3, 5, 7, 4
  q, kk, v, w = (jnp.asarray(rs.randn(n1, n2, *shape).astype(np.float32)) for shape in ((m, k), (s, k), (s, k), (m, k)))
  mask = rs.rand(n1, 1, m, s) > 0.4
  mask[0, 0, 2] = False  # a fully masked row
  mask[:, :, :, 0] = np.where(np.arange(m) == 2, mask[:, :, :, 0], True)  # every other row sees at least key 0
  mask = jnp.asarray(mask)
  scale = 0.37

  def formula(q, kk, v):
    logits = jnp.einsum("abmk,absk->abms", q.astype(jnp.float32), kk.astype(jnp.float32)) * scale
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("abms,absk->abmk", probs, v.astype(jnp.float32))

  args = tuple(a.astype(dtype) for a in (q, kk, v))
  out, pullback = jax.vjp(lambda *a: masked_attention(*a, mask, scale, keep_probs), *args)
  kept = saved_probs_max > 0 or keep_probs
  residual_shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(pullback)}
  assert ((n1, n2, m, s) in residual_shapes) == kept  # [M, S] probabilities kept or not
  assert ((n1, n2, m, 1) in residual_shapes) == (not kept)  # per-row statistics instead
  ref, ref_pullback = jax.vjp(formula, q, kk, v)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=tol, rtol=tol)
  uniform = np.asarray(v[0, 0].astype(dtype), np.float32).mean(0)  # the masked row: uniform over the keys
  np.testing.assert_allclose(np.asarray(out[0, 0, 2], np.float32), uniform, atol=tol, rtol=tol)
  grads, ref_grads = pullback(w.astype(dtype)), ref_pullback(w)
  for name, g, r in zip("qkv", grads, ref_grads):
    assert g.dtype == dtype
    scale_r = float(jnp.abs(r).max())
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), atol=tol * scale_r, rtol=tol, err_msg=name)
  assert float(jnp.abs(grads[0][0, 0, 2]).max()) == 0.0  # the fully masked row's query gets no gradient


@pytest.mark.parametrize("b,l,h,g,k,block,chunk", [(2, 37, 4, 2, 8, 8, None), (1, 40, 6, 3, 6, 16, 8),
                                                   (1, 9, 2, 1, 4, 16, None), (2, 24, 4, 2, 4, 8, 5)])
def test_causal_self_attention_equals_dense_reference(b, l, h, g, k, block, chunk, monkeypatch):
  """Query blocks against only the keys up to their end: the dense reference's values and gradients at every row
  (padding rows included: each sees its own slot), on packed rows with global or chunked masks, odd lengths, with
  both residual forms; and the compiled program really does fewer FLOPs than the dense one."""
  rs = np.random.RandomState(l + block)
  q, kk, v, w = (jnp.asarray(rs.randn(b, l, n, k), jnp.float32) for n in (h, g, g, h))
  seg = np.ones((b, l), np.int32)
  seg[:, l // 3:] = 2
  seg[:, l - 2:] = 0  # trailing padding
  pos = np.concatenate([np.arange(l // 3), np.arange(l - l // 3)])[None].repeat(b, 0).astype(np.int32)
  global_mask, chunked = self_attention_masks(jnp.asarray(pos), jnp.asarray(seg), chunk)
  mask = global_mask if chunk is None else chunked
  blocked = lambda q, kk, v: causal_self_attention(q, kk, v, mask, 0.3, block)  # noqa: E731
  dense = lambda q, kk, v: dot_product_attention(q, kk, v, mask, 0.3)  # noqa: E731
  for saved_probs_max in (1 << 17, 0):
    monkeypatch.setattr(attention_ops, "SAVED_PROBS_MAX", saved_probs_max)
    np.testing.assert_allclose(np.asarray(blocked(q, kk, v)), np.asarray(dense(q, kk, v)), rtol=1e-5, atol=1e-6)
    loss = lambda fn: lambda q, kk, v: jnp.sum(fn(q, kk, v) * w)  # noqa: E731
    for gb, gr in zip(jax.grad(loss(blocked), argnums=(0, 1, 2))(q, kk, v),
                      jax.grad(loss(dense), argnums=(0, 1, 2))(q, kk, v)):
      np.testing.assert_allclose(np.asarray(gb), np.asarray(gr), rtol=1e-4, atol=1e-5)

  def flops(fn):
    return jax.jit(fn).lower(q, kk, v).compile().cost_analysis()["flops"]

  if l > block:
    assert flops(blocked) < 0.85 * flops(dense)
  else:
    assert flops(blocked) == flops(dense)
