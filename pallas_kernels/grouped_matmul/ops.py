"""Public grouped matmuls: backend choice and the custom VJP of ``gmm``.

Backends (``backend=None`` picks one from ``jax.default_backend()``):
  * 'gpu': the Pallas Triton kernel (``kernel.py``); with ``interpret=True``
    it runs in the generic Pallas interpreter on any backend.
  * 'tpu': the Mosaic (TPU) Pallas kernel (``tpu_kernel.py``); with
    ``interpret=True`` it runs in TPU interpret mode (``pltpu.InterpretParams``)
    on any backend, CPU included.
  * 'xla': the reference (``jax.lax.ragged_dot``); ``interpret`` is ignored.
With ``backend=None``, ``interpret=True`` resolves to 'gpu' on every platform
(the behaviour from before the TPU kernel existed); otherwise a GPU or TPU
default backend resolves to its kernel and anything else (CPU) to 'xla'.
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.grouped_matmul import kernel
from pallas_kernels.grouped_matmul import reference
from pallas_kernels.grouped_matmul import tpu_kernel

DEFAULT_TILING = (128, 128, 128)
BACKENDS = ('gpu', 'tpu', 'xla')
_KERNELS = {'gpu': kernel, 'tpu': tpu_kernel}


def resolve_backend(interpret=False, backend=None):
  """The backend that ``gmm``/``tgmm`` run: one of ``BACKENDS``."""
  if backend is not None:
    if backend not in BACKENDS:
      raise ValueError(f'backend must be one of {BACKENDS} or None, got '
                       f'{backend!r}')
    return backend
  if interpret:
    # Without a backend, interpret=True keeps the Triton-style kernel (the
    # behaviour from before the TPU kernel), whatever the platform.
    return 'gpu'
  platform = jax.default_backend()
  return platform if platform in ('gpu', 'tpu') else 'xla'


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _gmm_pallas(lhs_TK, rhs_EKN, group_sizes_E, tiling, interpret,
                backend='gpu'):
  return _KERNELS[backend].gmm_kernel(lhs_TK, rhs_EKN, group_sizes_E,
                                      tiling=tiling, interpret=interpret)


def _gmm_pallas_fwd(lhs_TK, rhs_EKN, group_sizes_E, tiling, interpret,
                    backend):
  out_TN = _gmm_pallas(lhs_TK, rhs_EKN, group_sizes_E, tiling, interpret,
                       backend)
  return out_TN, (lhs_TK, rhs_EKN, group_sizes_E)


def _gmm_pallas_bwd(tiling, interpret, backend, residuals, d_out_TN):
  lhs_TK, rhs_EKN, group_sizes_E = residuals
  kernels = _KERNELS[backend]
  tm, tk, tn = tiling
  # d_lhs = d_out @ rhs[e]^T per group: the same grouped matmul with K and N
  # swapped, so the tiling swaps too. Rows past sum(group_sizes) get zeros,
  # matching the zero output they produced.
  d_lhs_TK = kernels.gmm_kernel(
      d_out_TN, jnp.swapaxes(rhs_EKN, 1, 2), group_sizes_E,
      tiling=(tm, tn, tk), interpret=interpret)
  d_rhs_EKN = kernels.tgmm_kernel(lhs_TK, d_out_TN, group_sizes_E,
                                  tiling=tiling, interpret=interpret)
  # Integer group sizes have no tangent space; None means a zero cotangent.
  return (d_lhs_TK.astype(lhs_TK.dtype), d_rhs_EKN.astype(rhs_EKN.dtype), None)


_gmm_pallas.defvjp(_gmm_pallas_fwd, _gmm_pallas_bwd)


def gmm(lhs_TK, rhs_EKN, group_sizes_E, *, interpret=False,
        tiling=DEFAULT_TILING, backend=None):
  """Grouped matmul: group e's rows of ``lhs_TK`` times ``rhs_EKN[e]``.

  Args:
    lhs_TK: [T, K] rows sorted by group.
    rhs_EKN: [E, K, N] per-group weights.
    group_sizes_E: [E] int rows per group; may be traced (sum <= T).
    interpret: run the Pallas kernel in interpret mode (CPU tests).
    tiling: (tm, tk, tn) tile sizes; shrunk for small shapes, any T/K/N works
      (the TPU kernel rounds tiles up to multiples of (8 or 16, 128, 128)).
    backend: None (from ``jax.default_backend()``), 'gpu', 'tpu' or 'xla';
      see the module docstring.

  Returns:
    out_TN; rows past sum(group_sizes_E) are zero. Differentiable w.r.t.
    ``lhs_TK`` and ``rhs_EKN`` (gmm for d_lhs, tgmm for d_rhs).
  """
  group_sizes_E = jnp.asarray(group_sizes_E, jnp.int32)
  backend = resolve_backend(interpret, backend)
  if backend == 'xla':
    return reference.gmm_reference(lhs_TK, rhs_EKN, group_sizes_E)
  return _gmm_pallas(lhs_TK, rhs_EKN, group_sizes_E, tuple(tiling), interpret,
                     backend)


def tgmm(lhs_TK, d_out_TN, group_sizes_E, *, interpret=False,
         tiling=DEFAULT_TILING, backend=None):
  """Transposed grouped matmul: ``d_rhs_EKN[e] = lhs_g^T @ d_out_g``.

  The weight gradient of ``gmm``; empty groups give zeros. Not itself
  differentiable on the kernel paths (no second-order rule is defined).
  ``interpret``, ``tiling`` and ``backend`` are as in ``gmm``.
  """
  group_sizes_E = jnp.asarray(group_sizes_E, jnp.int32)
  backend = resolve_backend(interpret, backend)
  if backend == 'xla':
    return reference.tgmm_reference(lhs_TK, d_out_TN, group_sizes_E)
  return _KERNELS[backend].tgmm_kernel(lhs_TK, d_out_TN, group_sizes_E,
                                       tiling=tuple(tiling),
                                       interpret=interpret)
