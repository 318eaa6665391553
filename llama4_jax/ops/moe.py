"""Llama 4 mixture-of-experts routing and dispatch, as pure functions over flattened tokens.

Routing (Llama 4): top-k on the raw router logits, score = sigmoid(logit) with no renormalisation, and the score
multiplies the expert *input*. Two dispatch paths give the same result:
  * `moe_sort`  - dropless: assignments sorted by expert, grouped matmuls over contiguous groups (`ragged_dot`), so
                  compute follows the experts actually used,
  * `moe_dense` - the test oracle: every expert on every token with zero-scaled inputs for unselected experts, which
                  is exact because a bias-free SwiGLU maps 0 to 0 (this is what the Hugging Face reference computes).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from llama4_jax.ops.linear import matmul, matmul_nt, matmul_tn


def route(x_TD, router_DE, top_k: int):
  """Returns (scores_TK in x.dtype, experts_TK int32, logits_TE)."""
  logits_TE = jnp.einsum("td,de->te", x_TD, router_DE.astype(x_TD.dtype))
  top_logits_TK, experts_TK = jax.lax.top_k(logits_TE, top_k)
  scores_TK = jax.nn.sigmoid(top_logits_TK.astype(jnp.float32)).astype(x_TD.dtype)
  return scores_TK, experts_TK.astype(jnp.int32), logits_TE


@jax.custom_vjp
def swiglu(h_gate_up):
  """[..., 2, F] (gate, up) -> silu(gate) * up.

  Hand-written backward: the gradient of both halves is produced as one [..., 2, F] array in a single fusion
  instead of two padded halves added together, which XLA:CPU then also had to transpose.
  """
  return jax.nn.silu(h_gate_up[..., 0, :]) * h_gate_up[..., 1, :]


def _swiglu_fwd(h_gate_up):
  return swiglu(h_gate_up), h_gate_up


def _swiglu_bwd(h_gate_up, g):
  gate, up = h_gate_up[..., 0, :], h_gate_up[..., 1, :]
  sig = jax.nn.sigmoid(gate)
  d_gate = g * up * sig * (1 + gate * (1 - sig))  # d silu(x) = sig(x) (1 + x (1 - sig(x)))
  d_up = g * gate * sig
  return (jnp.stack([d_gate, d_up], axis=-2),)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
_swiglu = swiglu


def moe_dense(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD):
  """Oracle: all experts on all tokens, input scaled by the (zero if unselected) router score."""
  t = x_TD.shape[0]
  e = gate_up_EDCF.shape[0]
  scores_TE = jnp.zeros((t, e), x_TD.dtype).at[jnp.arange(t)[:, None], experts_TK].set(scores_TK)
  x_ETD = scores_TE.T[:, :, None] * x_TD[None]
  h_ETF = _swiglu(jnp.einsum("etd,edcf->etcf", x_ETD, gate_up_EDCF))
  return jnp.einsum("etf,efd->td", h_ETF, down_EFD)


def moe_gathered(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD):
  """Each token through its own experts' weights, gathered per token: the few-token path (one decode step per row),
  where reading k expert slabs per token beats running every expert on every token."""
  out_TD = jnp.zeros_like(x_TD)
  for k in range(experts_TK.shape[1]):
    e_T = experts_TK[:, k]
    h_TF = _swiglu(jnp.einsum("td,tdcf->tcf", scores_TK[:, k:k + 1].astype(x_TD.dtype) * x_TD, gate_up_EDCF[e_T]))
    out_TD = out_TD + jnp.einsum("tf,tfd->td", h_TF, down_EFD[e_T])
  return out_TD


def sort_assignments(experts_TK, num_experts: int):
  """Order of the T*K (token, slot) assignments grouped by expert, its inverse, and the group sizes."""
  flat_A = experts_TK.reshape(-1)
  order_A = jnp.argsort(flat_A, stable=True)
  inverse_A = jnp.zeros_like(order_A).at[order_A].set(jnp.arange(order_A.shape[0], dtype=order_A.dtype))
  group_sizes_E = jnp.bincount(flat_A, length=num_experts).astype(jnp.int32)
  return order_A, inverse_A, group_sizes_E


def moe_sort(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD):
  """Dropless sort-based dispatch with grouped matmuls; equals `moe_dense`."""
  t, k = experts_TK.shape
  e, d, _, f = gate_up_EDCF.shape
  order_A, inverse_A, group_sizes_E = sort_assignments(experts_TK, e)
  token_A = order_A // k
  x_AD = x_TD[token_A] * scores_TK.reshape(-1)[order_A][:, None]
  h_AF = _swiglu(jax.lax.ragged_dot(x_AD, gate_up_EDCF.reshape(e, d, 2 * f), group_sizes_E).reshape(-1, 2, f))
  y_AD = jax.lax.ragged_dot(h_AF, down_EFD, group_sizes_E)
  # Gather back to (token, slot) order and sum the k slots: deterministic, unlike a scatter-add.
  return y_AD[inverse_A].reshape(t, k, -1).sum(axis=1)


def capacity_rows(experts_A, order_A, inverse_A, group_sizes_E, cap: int):
  """Which assignment fills each row of the `blocked` dispatch's [E, cap] capacity buffer, and the inverse.

  Expert e's first min(n_e, cap) assignments in sorted order (`sort_assignments`) go to rows e * cap, e * cap + 1,
  ...; the rest are its overflow. Returns (assignment per capacity row or -1 for an empty row, [E * cap]; capacity
  row per assignment or -1 for an overflow assignment, [A]): a partial permutation and its inverse."""
  e = group_sizes_E.shape[0]
  start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
  rows = jnp.arange(e * cap, dtype=jnp.int32)
  row_expert, rank = rows // cap, rows % cap
  sorted_R = jnp.where(rank < group_sizes_E[row_expert], start_E[row_expert] + rank, -1)
  assignment_R = jnp.where(sorted_R >= 0, order_A[jnp.maximum(sorted_R, 0)], -1).astype(jnp.int32)
  rank_A = inverse_A - start_E[experts_A]  # rank of each assignment inside its expert's group
  row_A = jnp.where(rank_A < cap, experts_A * cap + rank_A, -1).astype(jnp.int32)
  return assignment_R, row_A


@jax.custom_vjp
def _take_rows(x_SD, index_R, inverse_S):
  """x[index] for a (partial) permutation; rows with index -1 are zero. `inverse_S` maps source rows back.

  The transpose of a permutation is the inverse permutation, so the backward pass is a gather too: no serial
  scatter-add on CPU.
  """
  return jnp.where((index_R >= 0)[:, None], x_SD[jnp.maximum(index_R, 0)], 0)


def _take_rows_fwd(x_SD, index_R, inverse_S):
  return _take_rows(x_SD, index_R, inverse_S), (index_R, inverse_S)


def _take_rows_bwd(res, g_RD):
  index_R, inverse_S = res
  return _take_rows(g_RD, inverse_S, index_R), None, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def overflow_runs(group_sizes_E, cap: int, block: int):
  """The overflow of a capacity-`cap` dispatch by expert: (experts_J, begin_J, end_J, blocks_J, num_runs), the
  experts with more than `cap` assignments first (in expert order), each with the sorted positions where its
  overflow begins and where its group ends, and its number of `block`-row blocks."""
  start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
  blocks_E = -(-jnp.maximum(group_sizes_E - cap, 0) // block)
  experts_J = jnp.argsort(blocks_E == 0, stable=True).astype(jnp.int32)
  return (experts_J, (start_E + cap)[experts_J], (start_E + group_sizes_E)[experts_J], blocks_E[experts_J],
          jnp.sum(blocks_E > 0).astype(jnp.int32))


OVERFLOW_GROUP = 4  # overflow blocks an expert runs as one product while it has at least this many left


def _for_overflow_blocks(runs, gate_up_EDCF, down_EFD, carry, block_fn, block: int, begin=None, end=None):
  """Runs `block_fn(first, rows, stop, w_gate_up [D, 2F], w_down [F, D], inner)` over the overflow of every expert
  that has one, one expert at a time: its weights are sliced once per expert (a copy on CPU), not once per block.
  `first` is the sorted position of the block's first row, `rows` its static number of rows, `stop` the end of the
  expert's group (rows at or past it belong to other experts and must be masked). An expert's overflow is
  contiguous in sorted order, so its blocks go OVERFLOW_GROUP at a time (one product of OVERFLOW_GROUP * block rows,
  at a better matmul rate than narrow ones), then one at a time for the rest; a badly balanced router (at
  initialisation, a few experts get several times their share) then costs few narrow products. Per expert j,
  `begin(j, carry)` gives the blocks' carry and `end(j, carry, inner)` folds it back (default: the carry itself)."""
  experts_J, begin_J, end_J, blocks_J, num_runs = runs
  _, d, _, f = gate_up_EDCF.shape
  begin = begin or (lambda j, carry: carry)
  end = end or (lambda j, carry, inner: inner)

  def one_expert(j, carry):
    w = experts_J[j]
    w_gate_up, w_down = gate_up_EDCF[w].reshape(d, 2 * f), down_EFD[w]
    first, stop, groups = begin_J[j], end_J[j], blocks_J[j] // OVERFLOW_GROUP
    rows = OVERFLOW_GROUP * block
    inner = jax.lax.fori_loop(0, groups, lambda i, c: block_fn(first + i * rows, rows, stop, w_gate_up, w_down, c),
                              begin(j, carry))
    inner = jax.lax.fori_loop(groups * OVERFLOW_GROUP, blocks_J[j],
                              lambda i, c: block_fn(first + i * block, block, stop, w_gate_up, w_down, c), inner)
    return end(j, carry, inner)

  return jax.lax.fori_loop(0, num_runs, one_expert, carry)


def _overflow_rows(x_AD, order_A, first, rows: int, stop):
  """Rows first ... first + rows - 1 of the sorted assignments, read from assignment order: (assignment index per
  row, out of range (A and up, distinct) past the group's end `stop`, so a scatter there writes nothing; the rows,
  zero past the end)."""
  a = x_AD.shape[0]
  pos = first + jnp.arange(rows, dtype=jnp.int32)
  valid = pos < stop
  index = order_A[jnp.minimum(pos, a - 1)]
  return jnp.where(valid, index, a + jnp.arange(rows, dtype=jnp.int32)), jnp.where(valid[:, None], x_AD[index], 0)


def _experts_forward(x_AD, layout, gate_up_EDCF, down_EFD, cap: int, block: int):
  """Forward of `_capacity_experts`: (y_AD, the capacity part's input rows [E * cap, D] and pre-activations
  [E, cap, 2, F], kept for the backward; the overflow's are recomputed there, being few)."""
  assignment_R, row_A, order_A, runs = layout
  e, d, _, f = gate_up_EDCF.shape
  # Capacity part: one batched matmul per projection over all experts.
  x_RD = _take_rows(x_AD, assignment_R, row_A)
  h_ECF = matmul(x_RD.reshape(e, cap, d), gate_up_EDCF.reshape(e, d, 2 * f)).astype(x_AD.dtype)
  h_ECF = h_ECF.reshape(e, cap, 2, f)
  y_ED = matmul(swiglu(h_ECF), down_EFD).astype(x_AD.dtype)
  y_AD = _take_rows(y_ED.reshape(e * cap, d), row_A, assignment_R)  # overflow assignments: zero until set below

  def block_fn(first, rows, stop, w_gate_up, w_down, y_AD):
    # As [rows, D] x [D, 2F]: a 3-D weight operand would keep XLA:CPU from its fast bf16 matmul.
    index, x_BD = _overflow_rows(x_AD, order_A, first, rows, stop)
    h_BCF = matmul(x_BD, w_gate_up).astype(x_AD.dtype).reshape(-1, 2, f)
    y_BD = matmul(swiglu(h_BCF), w_down).astype(x_AD.dtype)
    return y_AD.at[index].set(y_BD, mode="drop", unique_indices=True)

  y_AD = _for_overflow_blocks(runs, gate_up_EDCF, down_EFD, y_AD, block_fn, block)
  return y_AD, x_RD, h_ECF


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _capacity_experts(x_AD, layout, gate_up_EDCF, down_EFD, cap: int, block: int):
  """Expert FFN of every assignment (rows of x_AD, input already scaled by its router score): the capacity part
  (`capacity_rows`) as one batched matmul per projection over experts, then each overflowing expert's remaining
  assignments in blocks of sorted positions (`overflow_runs`: loops with traced trip counts, zero when nothing
  overflowed), read and written in assignment order by index, so no buffer is sized for the worst case."""
  return _experts_forward(x_AD, layout, gate_up_EDCF, down_EFD, cap, block)[0]


def _capacity_experts_fwd(x_AD, layout, gate_up_EDCF, down_EFD, cap, block):
  y_AD, x_RD, h_ECF = _experts_forward(x_AD, layout, gate_up_EDCF, down_EFD, cap, block)
  return y_AD, (x_AD, layout, gate_up_EDCF, down_EFD, x_RD, h_ECF)


def _capacity_experts_bwd(cap, block, res, g_AD):
  """Capacity part as batched matmuls; the overflow expert by expert (pre-activations recomputed), each
  accumulating its blocks' weight gradients (float32) and adding them into its expert's slot once."""
  x_AD, layout, gate_up_EDCF, down_EFD, x_RD, h_ECF = res
  assignment_R, row_A, order_A, runs = layout
  e, d, _, f = gate_up_EDCF.shape
  g_ED = _take_rows(g_AD, assignment_R, row_A).reshape(e, cap, d)
  ddown = matmul_tn(swiglu(h_ECF), g_ED)
  dh_ECF = _swiglu_bwd(h_ECF, matmul_nt(g_ED, down_EFD).astype(x_AD.dtype))[0].reshape(e, cap, 2 * f)
  dgate_up = matmul_tn(x_RD.reshape(e, cap, d), dh_ECF).reshape(e, d, 2, f)
  dx_ED = matmul_nt(dh_ECF, gate_up_EDCF.reshape(e, d, 2 * f)).astype(x_AD.dtype)
  dx_AD = _take_rows(dx_ED.reshape(e * cap, d), row_A, assignment_R)

  def block_fn(first, rows, stop, w_gate_up, w_down, carry):
    dx_AD, dw_gate_up, dw_down = carry
    index, x_BD = _overflow_rows(x_AD, order_A, first, rows, stop)
    # Rows past the group read some other row's gradient: harmless, their inputs (so pre-activations and SwiGLU
    # outputs) are zero, so they add nothing to the weight gradients, and their input gradients are not written.
    g_BD = g_AD[jnp.minimum(index, x_AD.shape[0] - 1)]
    h_BCF = matmul(x_BD, w_gate_up).astype(x_AD.dtype).reshape(-1, 2, f)
    dw_down = dw_down + matmul_tn(swiglu(h_BCF), g_BD)
    dh_BCF = _swiglu_bwd(h_BCF, matmul_nt(g_BD, w_down).astype(x_AD.dtype))[0].reshape(-1, 2 * f)
    dw_gate_up = dw_gate_up + matmul_tn(x_BD, dh_BCF)
    dx_BD = matmul_nt(dh_BCF, w_gate_up).astype(x_AD.dtype)
    return dx_AD.at[index].set(dx_BD, mode="drop", unique_indices=True), dw_gate_up, dw_down

  def begin(j, carry):  # expert j's own zeroed weight-gradient accumulators
    dx_AD, dgate_up, ddown = carry
    return dx_AD, jnp.zeros_like(dgate_up, shape=(d, 2 * f)), jnp.zeros_like(ddown, shape=(f, d))

  def end(j, carry, inner):
    _, dgate_up, ddown = carry
    dx_AD, dw_gate_up, dw_down = inner
    w = runs[0][j]
    return dx_AD, dgate_up.at[w].add(dw_gate_up.reshape(d, 2, f)), ddown.at[w].add(dw_down)

  dx_AD, dgate_up, ddown = _for_overflow_blocks(runs, gate_up_EDCF, down_EFD, (dx_AD, dgate_up, ddown), block_fn,
                                                block, begin, end)
  return dx_AD, None, dgate_up.astype(gate_up_EDCF.dtype), ddown.astype(down_EFD.dtype)


_capacity_experts.defvjp(_capacity_experts_fwd, _capacity_experts_bwd)


def block_rows_for(num_assignments: int, num_experts: int, block: int | None = None) -> int:
  """Rows per expert block: `block` if given, else the power of two (32 to 128) nearest above the mean number of
  assignments per expert, so that few-token experts (many experts, small batches) are not padded to 128 rows."""
  if block is None:
    mean = max(1, -(-num_assignments // num_experts))
    block = min(128, max(32, 1 << (mean - 1).bit_length()))
  return max(1, min(block, num_assignments))


CAPACITY_SIGMAS = 3.0  # `blocked_capacity` default: the mean group plus this many standard deviations


def blocked_capacity(num_assignments: int, num_experts: int, capacity_factor: float | None = None) -> int:
  """Capacity rows per expert of `moe_blocked`: `capacity_factor` x the mean group if given, else the mean plus three
  standard deviations of a group's size under uniform routing (mean + 3 sqrt(mean)): little padding for large
  groups (1.19x the mean at 256 assignments per expert), few overflow blocks for small ones (1.75x at 16)."""
  mean = num_assignments / num_experts
  if capacity_factor is not None:
    if capacity_factor <= 0:
      raise ValueError(f"moe_blocked: capacity_factor must be > 0, got {capacity_factor!r}")
    return max(1, math.ceil(capacity_factor * mean))
  return max(1, math.ceil(mean + CAPACITY_SIGMAS * math.sqrt(mean)))


def moe_blocked(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, block: int | None = None,
                capacity_factor: float | None = None):
  """Dropless sort-based dispatch: a fixed capacity per expert as batched matmuls, the overflow in row blocks.

  Assignments are sorted by expert. Each expert's first C (`blocked_capacity`) assignments fill its rows of an
  [E, C] buffer, run as one batched matmul per projection (no loop); what an expert gets beyond C is not
  dropped but runs in blocks of `block` rows, which loops with traced trip counts visit expert by expert, each
  overflowing expert's weights sliced once for all its blocks (zero trips when no expert overflows), reading and
  writing its rows in place by index. The backward mirrors both parts. Compute follows the tokens (up to the
  capacity padding), never every expert on every token (`ragged_dot` on CPU).
  """
  t, k = experts_TK.shape
  d, e = x_TD.shape[1], gate_up_EDCF.shape[0]
  a = t * k
  cap = blocked_capacity(a, e, capacity_factor)
  if block is None:  # overflow is a small tail: blocks a quarter of the mean group size (at least 8 rows)
    block = max(8, block_rows_for(a, e) // 4)
  block = max(1, min(block, a))
  order_A, inverse_A, group_sizes_E = sort_assignments(experts_TK, e)
  assignment_R, row_A = capacity_rows(experts_TK.reshape(-1), order_A, inverse_A, group_sizes_E, cap)
  # token-slot a = t * k + j
  x_AD = jnp.repeat(x_TD, k, axis=0) * scores_TK.reshape(-1, 1)
  layout = (assignment_R, row_A, order_A.astype(jnp.int32), overflow_runs(group_sizes_E, cap, block))
  y_AD = _capacity_experts(x_AD, layout, gate_up_EDCF, down_EFD, cap, block)
  return y_AD.reshape(t, k, d).sum(axis=1)


def moe_pallas(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, interpret: bool = False):
  """`moe_sort` with the Pallas grouped matmul (pallas_kernels.grouped_matmul) in place of `ragged_dot`.

  The kernel runs on GPU (Pallas Triton) or anywhere with `interpret=True`; elsewhere gmm itself falls back to
  `ragged_dot`, so this path is always exact.
  """
  from pallas_kernels.grouped_matmul import gmm

  t, k = experts_TK.shape
  e, d, _, f = gate_up_EDCF.shape
  order_A, inverse_A, group_sizes_E = sort_assignments(experts_TK, e)
  x_AD = x_TD[order_A // k] * scores_TK.reshape(-1)[order_A][:, None]
  h_AF = _swiglu(gmm(x_AD, gate_up_EDCF.reshape(e, d, 2 * f), group_sizes_E, interpret=interpret).reshape(-1, 2, f))
  y_AD = gmm(h_AF, down_EFD, group_sizes_E, interpret=interpret)
  return y_AD[inverse_A].reshape(t, k, -1).sum(axis=1)


def capacity(num_assignments: int, num_experts: int, capacity_factor: float) -> int:
  """Rows reserved per (source device, expert) by the all_to_all transport."""
  return max(1, math.ceil(capacity_factor * num_assignments / num_experts))


def capacity_slots(experts_A, num_experts: int, cap: int):
  """(slot in the [E * cap] send buffer, kept mask) per assignment; rank within its expert in assignment order."""
  onehot_AE = (experts_A[:, None] == jnp.arange(num_experts, dtype=experts_A.dtype)).astype(jnp.int32)
  rank_A = jnp.take_along_axis(jnp.cumsum(onehot_AE, axis=0), experts_A[:, None], axis=1)[:, 0] - 1
  keep_A = rank_A < cap
  return jnp.where(keep_A, experts_A * cap + rank_A, 0), keep_A


def expert_ffn_batched(x_ERD, gate_up_EDCF, down_EFD):
  """Every expert on its own fixed-size row buffer: one batched matmul per projection."""
  return jnp.einsum("erf,efd->erd", _swiglu(jnp.einsum("erd,edcf->ercf", x_ERD, gate_up_EDCF)), down_EFD)


def capacity_scatter(x_AD, experts_A, num_experts: int, cap: int):
  """Assignment rows -> an [E * cap, D] buffer (expert-major, empty slots zero), with each row's slot and kept mask."""
  slot_A, keep_A = capacity_slots(experts_A, num_experts, cap)
  buffer = jnp.zeros((num_experts * cap, x_AD.shape[1]), x_AD.dtype).at[
      jnp.where(keep_A, slot_A, num_experts * cap)].set(x_AD, mode="drop", unique_indices=True)
  return buffer, slot_A, keep_A


def capacity_gather(buffer, slot_A, keep_A):
  """The inverse of `capacity_scatter` for outputs: each assignment's row, zero where it was dropped."""
  return jnp.where(keep_A[:, None], buffer[slot_A], 0)


def moe_capacity(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, capacity_factor: float = 1.25):
  """Fixed-capacity (Switch / GShard style) dispatch: each expert gets C = ceil(factor * T * k / E) rows, in token
  order; assignments past that are dropped (their slot contributes zero). Returns (y_TD, dropped count).

  Static shapes and plain batched matmuls, so its memory is what a grouped matmul needs times the factor: the
  dry run uses it as the stand-in for `ragged_dot` when compiling on CPU.
  """
  t, k = experts_TK.shape
  e, d = gate_up_EDCF.shape[0], x_TD.shape[1]
  cap = capacity(t * k, e, capacity_factor)
  x_AD = jnp.repeat(x_TD, k, axis=0) * scores_TK.reshape(-1, 1)
  buffer, slot_A, keep_A = capacity_scatter(x_AD, experts_TK.reshape(-1), e, cap)
  y_buffer = expert_ffn_batched(buffer.reshape(e, cap, d), gate_up_EDCF, down_EFD).reshape(e * cap, d)
  y_AD = capacity_gather(y_buffer, slot_A, keep_A)
  return y_AD.reshape(t, k, d).sum(axis=1), jnp.sum(jnp.logical_not(keep_A).astype(jnp.int32))


DISPATCH = {"ragged_dot": moe_sort, "blocked": moe_blocked, "dense": moe_dense, "pallas": moe_pallas,
            "gathered": moe_gathered}


def dispatch(impl: str, x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, *, interpret: bool = False,
             capacity_factor: float = 1.25):
  """Routed-expert output [T, D] and dropped-assignment count with the chosen implementation (`kernels.moe`)."""
  if impl == "capacity":
    return moe_capacity(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, capacity_factor)
  fn = functools.partial(moe_pallas, interpret=interpret) if impl == "pallas" else DISPATCH[impl]
  return fn(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD), jnp.zeros((), jnp.int32)


def load_statistics(logits_TE, experts_TK, valid_T):
  """Per-expert share of routed assignments and mean softmax router probability over valid tokens.

  These feed a Switch-style balancing loss E * sum_e f_e * P_e and the per-layer load metrics.
  """
  e = logits_TE.shape[-1]
  valid = valid_T.astype(jnp.float32)
  count = jnp.maximum(valid.sum(), 1.0)
  onehot_TE = jax.nn.one_hot(experts_TK, e, dtype=jnp.float32).sum(axis=1)
  fraction_E = (onehot_TE * valid[:, None]).sum(0) / (count * experts_TK.shape[1])
  probs_TE = jax.nn.softmax(logits_TE.astype(jnp.float32), axis=-1)
  prob_E = (probs_TE * valid[:, None]).sum(0) / count
  return {"expert_fraction": fraction_E, "router_prob": prob_E}
