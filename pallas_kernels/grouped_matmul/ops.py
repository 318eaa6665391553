"""Public grouped matmuls: backend choice and the custom VJP of ``gmm``.

``gmm`` runs the Pallas kernel (Pallas Triton) on a GPU backend or, anywhere,
with ``interpret=True``. Otherwise it runs the XLA reference
(``jax.lax.ragged_dot``): Pallas cannot compile for CPU, and on TPU ragged_dot
lowers to a native ragged op while this kernel targets Triton (megablox is
the TPU Pallas kernel).
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.grouped_matmul import kernel
from pallas_kernels.grouped_matmul import reference

DEFAULT_TILING = (128, 128, 128)


def _use_reference(interpret):
  return not interpret and jax.default_backend() != 'gpu'


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _gmm_pallas(lhs_TK, rhs_EKN, group_sizes_E, tiling, interpret):
  return kernel.gmm_kernel(lhs_TK, rhs_EKN, group_sizes_E, tiling=tiling,
                           interpret=interpret)


def _gmm_pallas_fwd(lhs_TK, rhs_EKN, group_sizes_E, tiling, interpret):
  out_TN = _gmm_pallas(lhs_TK, rhs_EKN, group_sizes_E, tiling, interpret)
  return out_TN, (lhs_TK, rhs_EKN, group_sizes_E)


def _gmm_pallas_bwd(tiling, interpret, residuals, d_out_TN):
  lhs_TK, rhs_EKN, group_sizes_E = residuals
  tm, tk, tn = tiling
  # d_lhs = d_out @ rhs[e]^T per group: the same grouped matmul with K and N
  # swapped, so the tiling swaps too. Rows past sum(group_sizes) get zeros,
  # matching the zero output they produced.
  d_lhs_TK = kernel.gmm_kernel(
      d_out_TN, jnp.swapaxes(rhs_EKN, 1, 2), group_sizes_E,
      tiling=(tm, tn, tk), interpret=interpret)
  d_rhs_EKN = kernel.tgmm_kernel(lhs_TK, d_out_TN, group_sizes_E,
                                 tiling=tiling, interpret=interpret)
  # Integer group sizes have no tangent space; None means a zero cotangent.
  return (d_lhs_TK.astype(lhs_TK.dtype), d_rhs_EKN.astype(rhs_EKN.dtype), None)


_gmm_pallas.defvjp(_gmm_pallas_fwd, _gmm_pallas_bwd)


def gmm(lhs_TK, rhs_EKN, group_sizes_E, *, interpret=False,
        tiling=DEFAULT_TILING):
  """Grouped matmul: group e's rows of ``lhs_TK`` times ``rhs_EKN[e]``.

  Args:
    lhs_TK: [T, K] rows sorted by group.
    rhs_EKN: [E, K, N] per-group weights.
    group_sizes_E: [E] int rows per group; may be traced (sum <= T).
    interpret: run the Pallas kernel in interpret mode (CPU tests).
    tiling: (tm, tk, tn) tile sizes; shrunk for small shapes, any T/K/N works.

  Returns:
    out_TN; rows past sum(group_sizes_E) are zero. Differentiable w.r.t.
    ``lhs_TK`` and ``rhs_EKN`` (gmm for d_lhs, tgmm for d_rhs).
  """
  group_sizes_E = jnp.asarray(group_sizes_E, jnp.int32)
  if _use_reference(interpret):
    return reference.gmm_reference(lhs_TK, rhs_EKN, group_sizes_E)
  return _gmm_pallas(lhs_TK, rhs_EKN, group_sizes_E, tuple(tiling), interpret)


def tgmm(lhs_TK, d_out_TN, group_sizes_E, *, interpret=False,
         tiling=DEFAULT_TILING):
  """Transposed grouped matmul: ``d_rhs_EKN[e] = lhs_g^T @ d_out_g``.

  The weight gradient of ``gmm``; empty groups give zeros. Not itself
  differentiable on the kernel path (no second-order rule is defined).
  """
  group_sizes_E = jnp.asarray(group_sizes_E, jnp.int32)
  if _use_reference(interpret):
    return reference.tgmm_reference(lhs_TK, d_out_TN, group_sizes_E)
  return kernel.tgmm_kernel(lhs_TK, d_out_TN, group_sizes_E,
                            tiling=tuple(tiling), interpret=interpret)
