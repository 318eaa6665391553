"""Flash attention kernels vs the materialised-mask reference, in Pallas interpret mode on CPU.

Tolerances: fp32 atol = rtol = 1e-5 (the kernels differ from the reference only in summation order). bf16 inputs
are compared with the fp32 reference on the same (bf16-rounded) inputs at atol = rtol = 3e-2: the kernels round
p and ds to bf16 before the matmuls (as a GPU kernel would), which costs ~2^-8 relative per term.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.flash_attention import attention_reference, flash_attention, kernel, reference
from pallas_kernels.testing import verified_triton_modules

H, K = 4, 8


def _inputs(b, l, g, dtype, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (b, l, H, K), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (b, l, g, K), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (b, l, g, K), jnp.float32).astype(dtype)
  do = jax.random.normal(kd, (b, l, H, K), jnp.float32).astype(dtype)
  return q, k, v, do


def _two_docs_and_padding(b, l):
  """Row 0: document 1, document 2, 3 padding tokens; row 1: one document filling the row."""
  first = (l - 3) // 2
  row0 = [1] * first + [2] * (l - 3 - first) + [0] * 3
  return jnp.array([row0, [1] * l][:b], jnp.int32)


def _out_and_grads(fn, q, k, v, do):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(do))


@functools.partial(jax.jit, static_argnames=("use_kernel", "causal", "chunk_size", "block_q", "block_k"))
def _vjp(q, k, v, do, segment_ids=None, positions=None, *, use_kernel, causal=True, chunk_size=None, block_q=8,
         block_k=8):
  """(out, dq, dk, dv) of the kernel (interpret mode) or the reference, jitted: one compile per configuration
  is ~2-4x cheaper on CPU than dispatching the ops one by one."""
  kw = dict(causal=causal, chunk_size=chunk_size, segment_ids=segment_ids, positions=positions)
  if use_kernel:
    fn = lambda q, k, v: flash_attention(q, k, v, block_q=block_q, block_k=block_k, interpret=True, **kw)  # noqa: E731
  else:
    fn = lambda q, k, v: attention_reference(q, k, v, **kw)  # noqa: E731
  return _out_and_grads(fn, q, k, v, do)


# (L, block_q, block_k, causal, chunk_size, G, segments): odd lengths, lengths off the block and chunk grid,
# chunks smaller / larger than / equal to the blocks, block_q != block_k both ways, MHA-like G=1 and GQA G=2.
CASES = [
  (19, 8, 4, True, None, 2, True),   # packed documents + padding, plain causal (Llama 4 NoPE layers)
  (19, 4, 8, False, None, 1, False),
  (23, 8, 8, True, 5, 2, False),     # chunk < block, L not a multiple of either
  (37, 8, 8, True, 12, 1, False),    # chunk > block, chunk not a multiple of the block
  (21, 8, 4, False, 16, 2, False),   # non-causal chunked (bidirectional inside a chunk)
  (17, 16, 8, True, 4, 2, True),     # chunk < both blocks, packed documents + padding
  (26, 8, 16, False, 8, 2, True),
  (1, 8, 8, True, None, 2, False),   # a single token
]


@pytest.mark.parametrize("l,block_q,block_k,causal,chunk,g,segments", CASES)
def test_matches_reference_fp32(l, block_q, block_k, causal, chunk, g, segments):
  q, k, v, do = _inputs(2, l, g, jnp.float32)
  seg = _two_docs_and_padding(2, l) if segments else None
  kw = dict(causal=causal, chunk_size=chunk)
  got = _vjp(q, k, v, do, seg, use_kernel=True, block_q=block_q, block_k=block_k, **kw)
  want = _vjp(q, k, v, do, seg, use_kernel=False, **kw)
  # All rows are compared, padding included: both sides define padding as attending only to padding.
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("causal,chunk,segments", [(True, 6, True), (False, None, False)])
def test_matches_reference_bf16(causal, chunk, segments):
  q, k, v, do = _inputs(2, 22, 2, jnp.bfloat16, seed=1)
  seg = _two_docs_and_padding(2, 22) if segments else None
  got = _vjp(q, k, v, do, seg, use_kernel=True, causal=causal, chunk_size=chunk)
  up = [x.astype(jnp.float32) for x in (q, k, v, do)]
  want = _vjp(*up, seg, use_kernel=False, causal=causal, chunk_size=chunk)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    assert a.dtype == jnp.bfloat16, name
    np.testing.assert_allclose(a.astype(jnp.float32), b, atol=3e-2, rtol=3e-2, err_msg=name)


def test_explicit_scale_under_jit():
  q, k, v, _ = _inputs(1, 12, 2, jnp.float32)
  got = jax.jit(lambda q, k, v: flash_attention(q, k, v, scale=0.3, block_q=4, block_k=4, interpret=True))(q, k, v)
  np.testing.assert_allclose(got, attention_reference(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


def _visible_blocks(l, block_q, block_k, causal, chunk):
  """Brute force: for each query block, the kv blocks holding a visible (real query, real key) pair."""
  mask = np.asarray(reference.attention_mask(l, l, causal=causal, chunk_size=chunk)[0])
  nq, nk = -(-l // block_q), -(-l // block_k)
  return [[j for j in range(nk) if mask[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k].any()]
          for i in range(nq)]


@pytest.mark.parametrize("causal", [True, False])
def test_block_ranges_are_exactly_the_visible_blocks(causal):
  """The loop bounds visit every block the mask touches (correctness) and nothing else (the skipping)."""
  for l, (bq, bk), chunk in itertools.product([1, 13, 32, 37], [(4, 8), (8, 4), (8, 8), (16, 4)],
                                              [None, 3, 8, 12, 20]):
    cfg = dict(block_q=bq, block_k=bk, seq_len=l, causal=causal, chunk_size=chunk)
    visible = _visible_blocks(l, bq, bk, causal, chunk)
    for i, want in enumerate(visible):
      lo, hi = (int(x) for x in kernel.kv_block_range(i, **cfg))
      assert list(range(lo, hi)) == want, (cfg, i)
    for j in range(-(-l // bk)):
      lo, hi = (int(x) for x in kernel.q_block_range(j, **cfg))
      assert list(range(lo, hi)) == [i for i, blocks in enumerate(visible) if j in blocks], (cfg, j)


def test_visited_block_counts():
  """Causal visits nq (nq + 1) / 2 tiles; chunked visits (C / b) (C / b + 1) / 2 per chunk, i.e. O(L * C)."""
  def visits(l, chunk, causal=True):
    cfg = dict(block_q=16, block_k=16, seq_len=l, causal=causal, chunk_size=chunk)
    return sum(int(hi) - int(lo) for lo, hi in (kernel.kv_block_range(i, **cfg) for i in range(l // 16)))
  assert visits(1024, None) == 64 * 65 // 2
  assert visits(1024, None, causal=False) == 64 * 64
  assert visits(1024, 64) == (1024 // 64) * (4 * 5 // 2)
  assert visits(2048, 64) == 2 * visits(1024, 64)  # linear in L at fixed chunk


def _poison(x, rows):
  return x.at[:, rows].set(jnp.nan)


def test_skipped_blocks_are_never_read_chunked():
  """NaN in chunks 0 and 2 must not reach chunk 1 in out, dq, dk or dv: 0 * NaN would if a block were read.

  Chunk 0 tests the forward / dq lower bound (first key of the query's chunk); chunk 2 tests the dk/dv upper
  bound (last query of the key's chunk). Neither is implied by causality alone for both directions.
  """
  q, k, v, do = _inputs(1, 48, 2, jnp.float32)
  bad = np.r_[0:16, 32:48]
  q_, k_, v_, do_ = (_poison(x, bad) for x in (q, k, v, do))
  out, dq, dk, dv = _vjp(q_, k_, v_, do_, use_kernel=True, chunk_size=16)
  assert np.isnan(out[:, :16]).all()  # the poison is live where the mask allows it
  # Chunk 1 alone, as its own 16-token sequence, is the clean oracle.
  want = _vjp(*(x[:, 16:32] for x in (q, k, v, do)), use_kernel=False)
  for name, a, b in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), want):
    np.testing.assert_allclose(a[:, 16:32], b, atol=1e-5, rtol=1e-5, err_msg=name)


def test_skipped_blocks_are_never_read_causal():
  """Causal: query blocks before the last never read the last kv block (forward and dq)."""
  q, k, v, do = _inputs(1, 32, 2, jnp.float32)
  bad = np.r_[24:32]
  out, dq, _, _ = _vjp(q, _poison(k, bad), _poison(v, bad), do, use_kernel=True)
  assert np.isnan(out[:, 24:]).all()
  want = _vjp(*(x[:, :24] for x in (q, k, v, do)), use_kernel=False)  # a causal prefix is closed
  np.testing.assert_allclose(out[:, :24], want[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(dq[:, :24], want[1], atol=1e-5, rtol=1e-5)


def test_rows_without_visible_keys_are_zero_not_nan():
  """Padded queries 12..15 of a 9-token, non-causal, chunk-4 row see no key at all (their chunk is padding)."""
  q, k, v, do = _inputs(1, 16, 2, jnp.float32)
  cfg = dict(scale=K ** -0.5, causal=False, chunk_size=4, seq_len=9, block_q=4, block_k=4, interpret=True)
  out, lse = kernel.flash_forward(q, k, v, None, None, **cfg)
  assert np.isfinite(out).all() and np.isfinite(lse).all()
  np.testing.assert_array_equal(out[:, 12:], 0.0)
  delta = jnp.einsum("blhk,blhk->bhl", out, do)
  grads = kernel.flash_backward(q, k, v, None, None, do, lse, delta, **cfg)
  assert all(np.isfinite(g).all() for g in grads)


def test_rejects_bad_arguments():
  q, k, v, _ = _inputs(1, 8, 2, jnp.float32)
  with pytest.raises(ValueError, match="self-attention"):
    flash_attention(q, k[:, :4], v[:, :4], interpret=True)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    flash_attention(q[:, :, :3], k, v, interpret=True)
  with pytest.raises(ValueError, match="chunk_size"):
    flash_attention(q, k, v, chunk_size=0, interpret=True)


# ---- Document-relative chunks (`positions`): Llama 4 aligns chunks to each packed document's position 0. ----


def _packed(l, docs, padding_positions="grow"):
  """(segment_ids, positions) [l] for documents of the given lengths followed by padding (segment 0).

  Positions restart at 0 per document. Padding positions grow by one per slot from 0 (a segment of its own, as
  `llama4_jax.model.transformer.positions_from_segments` gives) or are all 0 ("zero", as some packers write).
  """
  seg, pos = [], []
  for d, n in enumerate(docs, start=1):
    seg += [d] * n
    pos += list(range(n))
  pad = l - len(seg)
  assert pad >= 0
  seg += [0] * pad
  pos += list(range(pad)) if padding_positions == "grow" else [0] * pad
  return np.array(seg, np.int32), np.array(pos, np.int32)


def _packed_batch(l, rows, padding_positions="grow"):
  seg, pos = zip(*(_packed(l, docs, padding_positions) for docs in rows))
  return jnp.asarray(np.stack(seg)), jnp.asarray(np.stack(pos))


# (L, block_q, block_k, causal, chunk_size, G, documents of row 0, documents of row 1): document starts off the
# chunk grid, trailing padding, chunk smaller / larger than the blocks, G in {1, 2}.
POSITION_CASES = [
  (29, 8, 8, True, 5, 2, [7, 13], [3, 11, 12]),     # chunk < block; starts 7, 20 and 3, 14; padding 9 and 3
  (31, 8, 4, True, 12, 1, [10, 9, 8], [17, 14]),   # chunk > both blocks, three documents + 4 padding
  (26, 4, 8, True, 3, 2, [11, 12], [4, 22]),       # chunk < both blocks; row 1 has no padding
  (24, 8, 8, False, 6, 2, [9, 11], [5, 7, 9]),      # bidirectional inside a document's chunk
]


@pytest.mark.parametrize("l,block_q,block_k,causal,chunk,g,docs0,docs1", POSITION_CASES)
def test_positions_match_reference_fp32(l, block_q, block_k, causal, chunk, g, docs0, docs1):
  q, k, v, do = _inputs(2, l, g, jnp.float32, seed=2)
  seg, pos = _packed_batch(l, [docs0, docs1])
  kw = dict(causal=causal, chunk_size=chunk)
  got = _vjp(q, k, v, do, seg, pos, use_kernel=True, block_q=block_q, block_k=block_k, **kw)
  want = _vjp(q, k, v, do, seg, pos, use_kernel=False, **kw)
  # Index-aligned chunks would be a different mask in both rows: the test really exercises the positions.
  by_index, by_pos = (np.asarray(reference.attention_mask(l, l, segment_ids_BL=seg, positions_BL=p, **kw))
                      for p in (None, pos))
  assert all((by_index[r] != by_pos[r]).any() for r in range(2))
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


def test_positions_padding_at_position_zero_keeps_documents_exact():
  """Padding with position 0 everywhere breaks the one-per-slot rule for segment 0 only: the band may drop some of
  its keys, but every document row (out, dq) and every document key (dk, dv) stays exact.

  Same shapes and static arguments as the first POSITION_CASES entry, so the jitted functions are reused."""
  l, docs = 29, [[7, 13], [3, 11, 12]]  # 9 and 3 padding slots, all at position 0
  q, k, v, do = _inputs(2, l, 2, jnp.float32, seed=3)
  seg, pos = _packed_batch(l, docs, padding_positions="zero")
  got = _vjp(q, k, v, do, seg, pos, use_kernel=True, chunk_size=5, block_q=8, block_k=8)
  want = _vjp(q, k, v, do, seg, pos, use_kernel=False, chunk_size=5)
  assert all(np.isfinite(x).all() for x in got)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    for row, d in enumerate(docs):
      np.testing.assert_allclose(a[row, :sum(d)], b[row, :sum(d)], atol=1e-5, rtol=1e-5, err_msg=name)


def _random_packings(l, rng, n):
  """n rows of 1-4 documents of random lengths (starts off any grid) and 0-5 padding slots."""
  rows = []
  for _ in range(n):
    pad = int(rng.integers(0, min(6, l)))
    cuts = sorted(rng.choice(np.arange(1, l - pad), size=min(int(rng.integers(0, 4)), max(l - pad - 1, 0)),
                             replace=False).tolist()) if l - pad > 1 else []
    edges = [0] + cuts + [l - pad]
    rows.append([b - a for a, b in zip(edges, edges[1:]) if b > a])
  return rows


@pytest.mark.parametrize("causal", [True, False])
def test_position_block_ranges_cover_the_visible_blocks(causal):
  """Brute force: with positions growing by one per slot inside each segment, the position-based bounds visit
  every tile the dense mask needs (both directions), for random packings, block shapes and chunk sizes.

  The batch also holds a row per chunk phase (a first document of length s = 0..C-1, then one filling the row), so
  the union of needed tiles is the whole band and the bounds must equal it: neither too narrow nor too wide.
  """
  rng = np.random.default_rng(0)
  for l, (bq, bk), chunk in itertools.product([1, 13, 37], [(4, 8), (8, 4), (8, 8), (16, 4)],
                                              [2, 3, 6, 8, 12, 20]):  # 2 and 6 put band edges on block edges
    phases = [[n for n in (s, l - s) if n] for s in range(min(chunk, l))]
    seg, pos = _packed_batch(l, _random_packings(l, rng, 3) + phases)
    masks = np.asarray(reference.attention_mask(l, l, causal=causal, chunk_size=chunk, segment_ids_BL=seg,
                                                positions_BL=pos))
    cfg = dict(block_q=bq, block_k=bk, seq_len=l, causal=causal, chunk_size=chunk, by_position=True)
    nq, nk = -(-l // bq), -(-l // bk)
    needed_per_row = [{(i, j) for i in range(nq) for j in range(nk)
                       if m[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk].any()} for m in masks]
    by_q = {(i, j) for i in range(nq) for j in range(*(int(x) for x in kernel.kv_block_range(i, **cfg)))}
    by_k = {(i, j) for j in range(nk) for i in range(*(int(x) for x in kernel.q_block_range(j, **cfg)))}
    for row, needed in enumerate(needed_per_row):  # safety: every row's tiles are visited
      assert needed <= by_q and needed <= by_k, (cfg, row, sorted(needed - by_q), sorted(needed - by_k))
    union = set().union(*needed_per_row)
    assert by_q == union and by_k == union, (cfg, sorted(by_q ^ union), sorted(by_k ^ union))


def test_position_block_ranges_are_a_band():
  """Position-based bounds visit O(L * C) tiles: at most C / b + 1 kv blocks per query block (and the transpose)."""
  def visits(l, chunk, causal=True):
    cfg = dict(block_q=16, block_k=16, seq_len=l, causal=causal, chunk_size=chunk, by_position=True)
    fwd = sum(int(hi) - int(lo) for lo, hi in (kernel.kv_block_range(i, **cfg) for i in range(l // 16)))
    bwd = sum(int(hi) - int(lo) for lo, hi in (kernel.q_block_range(j, **cfg) for j in range(l // 16)))
    assert fwd == bwd, (l, chunk, causal)  # same tile set seen from either side
    return fwd
  assert visits(1024, 64) == 64 * 5 - (4 + 3 + 2 + 1)  # the band [q - 63, q] spans 5 blocks of 16
  assert visits(2048, 64) - 2 * visits(1024, 64) == 4 + 3 + 2 + 1  # linear in L (only the first blocks are short)
  assert visits(1024, 64, causal=False) <= 64 * 9  # [q - 63, q + 63]
  assert visits(1024, 16) == 64 * 2 - 1  # chunk == block: the block itself and the previous one
  assert visits(1024, 64) < 64 * 65 // 2  # far below plain causal


@pytest.mark.parametrize('chunked', [False, True])
def test_lowers_to_pallas_triton_for_cuda(chunked):
  # No GPU here: cross-lowering builds the Triton IR of the forward, dq and dk/dv kernels (PTX compilation and
  # execution are not exercised). It caught a Mosaic-GPU default lowering and an i1/i32 select the interpreter
  # accepts.
  b, l, h, g, k = 1, 256, 4, 2, 64

  def out_and_grads(q, kk, v, seg, pos, d_out):
    fn = lambda q, kk, v: flash_attention(q, kk, v, causal=True, chunk_size=128 if chunked else None,
                                          segment_ids=seg if chunked else None,
                                          positions=pos if chunked else None)
    out, vjp = jax.vjp(fn, q, kk, v)
    return (out, *vjp(d_out))

  args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
      ((b, l, h, k), jnp.bfloat16), ((b, l, g, k), jnp.bfloat16), ((b, l, g, k), jnp.bfloat16),
      ((b, l), jnp.int32), ((b, l), jnp.int32), ((b, l, h, k), jnp.bfloat16))]
  with verified_triton_modules() as seen:
    lowered = jax.jit(out_and_grads).trace(*args).lower(lowering_platforms=('cuda',))
  assert lowered.as_text().count('custom_call @__gpu$xla.gpu.triton') == 3
  assert seen['modules'] == 3 and seen['errors'] == []  # each module passes MLIR's verifier
