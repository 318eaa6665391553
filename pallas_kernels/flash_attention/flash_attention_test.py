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
def _vjp(q, k, v, do, segment_ids=None, *, use_kernel, causal=True, chunk_size=None, block_q=8, block_k=8):
  """(out, dq, dk, dv) of the kernel (interpret mode) or the reference, jitted: one compile per configuration
  is ~2-4x cheaper on CPU than dispatching the ops one by one."""
  kw = dict(causal=causal, chunk_size=chunk_size, segment_ids=segment_ids)
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
  out, lse = kernel.flash_forward(q, k, v, None, **cfg)
  assert np.isfinite(out).all() and np.isfinite(lse).all()
  np.testing.assert_array_equal(out[:, 12:], 0.0)
  delta = jnp.einsum("blhk,blhk->bhl", out, do)
  grads = kernel.flash_backward(q, k, v, None, do, lse, delta, **cfg)
  assert all(np.isfinite(g).all() for g in grads)


def test_rejects_bad_arguments():
  q, k, v, _ = _inputs(1, 8, 2, jnp.float32)
  with pytest.raises(ValueError, match="self-attention"):
    flash_attention(q, k[:, :4], v[:, :4], interpret=True)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    flash_attention(q[:, :, :3], k, v, interpret=True)
  with pytest.raises(ValueError, match="chunk_size"):
    flash_attention(q, k, v, chunk_size=0, interpret=True)
