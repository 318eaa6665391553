"""Plain-JAX grouped matmuls: the test oracle and the CPU (XLA) path.

Shape key: T rows (tokens, sorted by group), K contraction, N output, E groups.
Rows ``sum(group_sizes_E) <= r < T`` belong to no group: their outputs are zero
and they contribute nothing to weight gradients.
"""

import jax
import jax.numpy as jnp


def gmm_reference(lhs_TK, rhs_EKN, group_sizes_E):
  """Grouped matmul: rows of group e (contiguous, in order) times ``rhs_EKN[e]``.

  Args:
    lhs_TK: [T, K] rows sorted by group.
    rhs_EKN: [E, K, N] one weight matrix per group.
    group_sizes_E: [E] int rows per group (may be traced; sum <= T).

  Returns:
    out_TN with the dtype of ``lhs_TK``; rows past the last group are zero.
  """
  # ragged_dot already zeroes rows past sum(group_sizes) and has autodiff rules,
  # so the gradients of this function are the oracle for the kernel's VJP.
  return jax.lax.ragged_dot(
      lhs_TK, rhs_EKN, group_sizes_E.astype(jnp.int32),
      preferred_element_type=jnp.float32).astype(lhs_TK.dtype)


def group_ids(group_sizes_E, num_rows):
  """Group index of each row, and whether the row belongs to any group.

  Returns:
    (group_T, valid_T): int32 group per row (E for rows past the end) and a
    bool mask that is False for rows past ``sum(group_sizes_E)``.
  """
  ends_E = jnp.cumsum(group_sizes_E.astype(jnp.int32))
  rows_T = jnp.arange(num_rows, dtype=jnp.int32)
  # side='right': a row equal to a group's end belongs to the next group, which
  # also steps over empty groups (their start == end).
  group_T = jnp.searchsorted(ends_E, rows_T, side='right').astype(jnp.int32)
  return group_T, rows_T < ends_E[-1]


def tgmm_reference(lhs_TK, d_out_TN, group_sizes_E):
  """Transposed grouped matmul: ``d_rhs[e] = lhs_g^T @ d_out_g`` per group.

  A masked einsum (independent of ragged_dot, so the two references check each
  other in the tests). Empty groups give zeros.

  Returns:
    d_rhs_EKN in float32-accumulated, ``lhs_TK.dtype`` result.
  """
  num_groups = group_sizes_E.shape[0]
  group_T, valid_T = group_ids(group_sizes_E, lhs_TK.shape[0])
  member_TE = (group_T[:, None] == jnp.arange(num_groups)[None, :]) & valid_T[:, None]
  # where (not multiply) so rows outside every group cannot leak inf/NaN.
  lhs_TEK = jnp.where(member_TE[:, :, None], lhs_TK[:, None, :], 0)
  d_out_TN = jnp.where(valid_T[:, None], d_out_TN, 0)
  d_rhs_EKN = jnp.einsum('tek,tn->ekn', lhs_TEK, d_out_TN,
                         preferred_element_type=jnp.float32)
  return d_rhs_EKN.astype(lhs_TK.dtype)
