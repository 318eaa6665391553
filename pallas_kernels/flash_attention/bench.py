"""Times flash_attention against a dense baseline over sequence lengths; prints one JSON line per measurement.

  python -m pallas_kernels.flash_attention.bench                      # CPU: interpret mode, tiny lengths
  python -m pallas_kernels.flash_attention.bench --lengths 1024,4096,16384 --chunk 8192 --dtype bfloat16  # GPU

On CPU the kernels run in Pallas interpret mode, so only the `max_abs_err` column means anything: interpret mode
gives no performance signal. On GPU the kernels compile through Pallas Triton and the baseline is
jax.nn.dot_product_attention (cuDNN/XLA) with the same mask materialised; there the times are the point.
Measures and prints; never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from pallas_kernels.flash_attention import attention_reference, flash_attention
from pallas_kernels.flash_attention.reference import attention_mask


def _time(fn, *args, iters: int) -> float:
  """Median wall seconds of a jitted call, after one warm-up call that also compiles."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def _baseline(on_gpu: bool, causal: bool, chunk: int | None):
  """Dense attention to compare against: cuDNN/XLA on GPU, the plain-JAX reference elsewhere."""
  if not on_gpu:
    return lambda q, k, v: attention_reference(q, k, v, causal=causal, chunk_size=chunk)
  if chunk is None:
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)

  def chunked(q, k, v):
    mask = attention_mask(q.shape[1], k.shape[1], causal=causal, chunk_size=chunk)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask)
  return chunked


def _loss(fn):
  """Scalar loss so fwd+bwd timing includes all three input gradients."""
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="64,128,256")
  parser.add_argument("--chunk", type=int, default=None, help="chunk size (Llama 4 RoPE layers use 8192)")
  parser.add_argument("--no-causal", action="store_true")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--kv-heads", type=int, default=2)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=None, help="block_q = block_k (default 64 on GPU, 32 on CPU)")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--iters", type=int, default=3)
  args = parser.parse_args()

  on_gpu = jax.default_backend() == "gpu"
  interpret = not on_gpu
  block = args.block or (64 if on_gpu else 32)
  causal, dtype = not args.no_causal, jnp.dtype(args.dtype)
  for length in (int(x) for x in args.lengths.split(",")):
    kq, kk, kv = jax.random.split(jax.random.key(length), 3)
    q = jax.random.normal(kq, (args.batch, length, args.heads, args.head_dim), dtype)
    k = jax.random.normal(kk, (args.batch, length, args.kv_heads, args.head_dim), dtype)
    v = jax.random.normal(kv, (args.batch, length, args.kv_heads, args.head_dim), dtype)
    flash = lambda q, k, v: flash_attention(q, k, v, causal=causal, chunk_size=args.chunk,  # noqa: E731
                                            block_q=block, block_k=block, interpret=interpret)
    base = _baseline(on_gpu, causal, args.chunk)
    err = float(jnp.max(jnp.abs(jax.jit(flash)(q, k, v).astype(jnp.float32)
                                - attention_reference(q, k, v, causal=causal, chunk_size=args.chunk)
                                .astype(jnp.float32))))
    row = dict(device=jax.devices()[0].device_kind, interpret=interpret, length=length, chunk=args.chunk,
               causal=causal, dtype=args.dtype, block=block, max_abs_err=err,
               flash_fwd_s=_time(jax.jit(flash), q, k, v, iters=args.iters),
               base_fwd_s=_time(jax.jit(base), q, k, v, iters=args.iters),
               flash_fwd_bwd_s=_time(_loss(flash), q, k, v, iters=args.iters),
               base_fwd_bwd_s=_time(_loss(base), q, k, v, iters=args.iters))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
