"""Times the grouped-matmul kernel vs the XLA reference vs a dense matmul.

The dense baseline is one [T, K] @ [K, N] matmul: the same 2*T*K*N FLOPs as a
grouped matmul where every row is in some group. Prints one JSON line per
(implementation, pass, E); benchmarks measure, they never assert.

``--backend`` picks the kernel: 'gpu' (Pallas Triton) or 'tpu' (Mosaic);
'auto' takes the default device's kernel ('gpu' on CPU). A kernel whose
platform is not the default device runs in interpret mode (the TPU kernel in
TPU interpret mode): its numbers are NOT a performance signal (the kernel body
is emulated op by op); only the reported max error against the reference is
meaningful there. Run on a GPU or TPU for timings.

  python -m pallas_kernels.grouped_matmul.bench            # E = 8..128
  python -m pallas_kernels.grouped_matmul.bench --quick    # tiny smoke run
  python -m pallas_kernels.grouped_matmul.bench --backend tpu --quick
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.grouped_matmul import gmm
from pallas_kernels.grouped_matmul import gmm_reference


def _routed_group_sizes(num_rows, num_groups, seed):
  # Random top-1 routing: uneven sizes, some groups may be empty at large E.
  expert_T = np.random.default_rng(seed).integers(0, num_groups, num_rows)
  return jnp.asarray(np.bincount(expert_T, minlength=num_groups), jnp.int32)


def _time_ms(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def _with_grads(fn):
  """fwd+bwd of sum(fn(lhs, rhs, sizes) * d_out) w.r.t. lhs and rhs."""
  def loss(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN):
    return jnp.sum(fn(lhs_TK, rhs_EKN, group_sizes_E).astype(jnp.float32)
                   * d_out_TN)
  return jax.grad(loss, argnums=(0, 1))


def bench_one(T, K, N, E, dtype, tiling, backend, interpret, reps):
  k1, k2, k3 = jax.random.split(jax.random.key(E), 3)
  lhs_TK = jax.random.normal(k1, (T, K), jnp.float32).astype(dtype)
  rhs_EKN = jax.random.normal(k2, (E, K, N), jnp.float32).astype(dtype)
  d_out_TN = jax.random.normal(k3, (T, N), jnp.float32)
  sizes_E = _routed_group_sizes(T, E, seed=E)
  kernel_fn = lambda l, r, g: gmm(l, r, g, interpret=interpret, tiling=tiling,
                                  backend=backend)
  impls = {'kernel': kernel_fn, 'reference': gmm_reference,
           'dense': lambda l, r, g: l @ r[0]}
  want_TN = jax.jit(gmm_reference)(lhs_TK, rhs_EKN, sizes_E)
  got_TN = jax.jit(kernel_fn)(lhs_TK, rhs_EKN, sizes_E)
  err = float(jnp.max(jnp.abs(got_TN.astype(jnp.float32)
                              - want_TN.astype(jnp.float32))))
  rows = []
  for name, fn in impls.items():
    for pass_name, wrapped in (('fwd', fn), ('fwd_bwd', _with_grads(fn))):
      args = (lhs_TK, rhs_EKN, sizes_E) + ((d_out_TN,) if pass_name != 'fwd' else ())
      ms = _time_ms(jax.jit(wrapped), args, reps)
      flops = 2 * T * K * N * (1 if pass_name == 'fwd' else 3)
      rows.append({'impl': name, 'pass': pass_name, 'E': E, 'T': T, 'K': K,
                   'N': N, 'dtype': jnp.dtype(dtype).name, 'ms': round(ms, 3),
                   'tflops': round(flops / ms / 1e9, 4),
                   'kernel_max_abs_err': err, 'backend': backend,
                   'interpret': interpret,
                   'tiling': list(tiling), 'device': jax.devices()[0].device_kind})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tokens', type=int, default=512)
  parser.add_argument('--k', type=int, default=256)
  parser.add_argument('--n', type=int, default=256)
  parser.add_argument('--experts', type=int, nargs='+', default=[8, 16, 32, 64, 128])
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--tiling', type=int, nargs=3, default=[128, 128, 128])
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--backend', choices=['auto', 'gpu', 'tpu'],
                      default='auto', help="kernel to time; 'auto': the "
                      "default device's ('gpu' when that is a CPU)")
  parser.add_argument('--quick', action='store_true', help='tiny shapes, E=8,16')
  args = parser.parse_args()
  if args.quick:
    args.tokens, args.k, args.n, args.experts, args.reps = 128, 64, 64, [8, 16], 1
  platform = jax.default_backend()
  backend = args.backend
  if backend == 'auto':
    backend = platform if platform in ('gpu', 'tpu') else 'gpu'
  interpret = backend != platform
  if interpret:
    print(json.dumps({'note': f'no {backend.upper()} backend: the {backend} '
                              'kernel runs in Pallas interpret mode; timings '
                              'are not a performance signal, only '
                              'kernel_max_abs_err is meaningful'}))
  for E in args.experts:
    for row in bench_one(args.tokens, args.k, args.n, E, jnp.dtype(args.dtype),
                         tuple(args.tiling), backend, interpret, args.reps):
      print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
