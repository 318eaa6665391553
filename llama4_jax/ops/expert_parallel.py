"""Expert parallelism: the routed experts of one MoE layer inside a `jax.shard_map` over the whole mesh.

Every device holds a slice of the tokens (batch split over data x fsdp x expert) and E / ep experts (ep = size of
the `expert` axis), each with a 1 / tp slice of the expert width (tp = size of the `tensor` axis). Per device:

  1. its tokens are already routed (top-k and sigmoid scores computed outside, under the normal sharding); each
     (token, slot) assignment is scaled by its score (Llama 4 scales the expert *input*);
  2. assignments travel to the devices holding their experts over the `expert` axis,
  3. the local experts run as a grouped matmul,
  4. results travel back, the k slots of each token are summed, and partial sums over the expert width are added
     over the `tensor` axis.

Transports (`expert_parallel.transport`):
  * `all_to_all` - fixed capacity C = ceil(capacity_factor * A / E) rows per (source device, expert), A = local
    assignments; a dense `jax.lax.all_to_all` moves [ep, E/ep, C, D] buffers. Assignments past an expert's capacity
    are dropped (first come, first served in token order) and counted. Runs on every backend, CPU included.
  * `ragged_all_to_all` - dropless: assignments sorted by expert move with `jax.lax.ragged_all_to_all` into a
    worst-case buffer; GPU and TPU only (XLA:CPU does not implement it; rejected up front).
  * `ragged_all_gather` - the same dropless algorithm with the ragged collective emulated by an all-gather (every
    backend; ep times the traffic). It exists to test the dropless path on CPU and to debug.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llama4_jax.ops.moe import (capacity, capacity_gather, capacity_scatter, dispatch, expert_ffn_batched,
                                sort_assignments, swiglu)
from llama4_jax.sharding import BATCH_AXES, Parallel


def _all_to_all_capacity(x_AD, experts_A, gate_up_EDCF, down_EFD, *, ep: int, num_experts: int, cap: int):
  d = x_AD.shape[1]
  e_loc = gate_up_EDCF.shape[0]
  send, slot_A, keep_A = capacity_scatter(x_AD, experts_A, num_experts, cap)
  # [ep (destination), E_loc * cap, D] -> [ep (source), E_loc * cap, D]
  recv = jax.lax.all_to_all(send.reshape(ep, e_loc * cap, d), "expert", 0, 0, tiled=False)
  x_ERD = recv.reshape(ep, e_loc, cap, d).transpose(1, 0, 2, 3).reshape(e_loc, ep * cap, d)
  y_ERD = expert_ffn_batched(x_ERD, gate_up_EDCF, down_EFD)
  y_send = y_ERD.reshape(e_loc, ep, cap, d).transpose(1, 0, 2, 3).reshape(ep, e_loc * cap, d)
  back = jax.lax.all_to_all(y_send, "expert", 0, 0, tiled=False).reshape(num_experts * cap, d)
  return capacity_gather(back, slot_A, keep_A), jnp.sum(jnp.logical_not(keep_A).astype(jnp.int32))


def ragged_all_gather(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name: str,
                      axis_size: int):
  """`jax.lax.ragged_all_to_all` semantics built from all-gathers (every backend; axis_size x the traffic).

  Device i sends rows [input_offsets[j], + send_sizes[j]) of its operand to device j, where they land at rows
  [output_offsets[j], + send_sizes[j]) of j's output (output_offsets are in the receiver's frame).
  """
  del recv_sizes  # implied by the senders' tables
  me = jax.lax.axis_index(axis_name)
  operands = jax.lax.all_gather(operand, axis_name)  # [n, rows_in, D]
  in_off = jax.lax.all_gather(input_offsets, axis_name)[:, me]  # from each source: where my rows start there
  sizes = jax.lax.all_gather(send_sizes, axis_name)[:, me]
  out_off = jax.lax.all_gather(output_offsets, axis_name)[:, me]
  rows = jnp.arange(output.shape[0], dtype=jnp.int32)
  for i in range(axis_size):
    inside = (rows >= out_off[i]) & (rows < out_off[i] + sizes[i])
    src = jnp.clip(rows - out_off[i] + in_off[i], 0, operand.shape[0] - 1)
    output = jnp.where(inside[:, None], operands[i][src], output)
  return output


def _ragged_plan(group_sizes_E, ep: int):
  """Offsets and sizes of both ragged transfers for this device, from every device's per-expert counts.

  R[i, j] = rows device i sends to device j. Going out, device r sends its expert-sorted rows in destination order;
  they land in j's buffer after the rows of devices < r. Coming back, the roles swap.
  """
  e = group_sizes_E.shape[0]
  counts_NE = jax.lax.all_gather(group_sizes_E, "expert")  # [ep (source), E]
  r_NN = counts_NE.reshape(ep, ep, e // ep).sum(-1)  # [source, destination]
  me = jax.lax.axis_index("expert")
  send_start_NN = jnp.cumsum(r_NN, axis=1) - r_NN  # where i's rows for j start in i's sorted rows
  recv_start_NN = jnp.cumsum(r_NN, axis=0) - r_NN  # where i's rows start in j's receive buffer
  out_plan = (send_start_NN[me], r_NN[me], recv_start_NN[me], r_NN[:, me])
  back_plan = (recv_start_NN[:, me], r_NN[:, me], send_start_NN[:, me], r_NN[me])
  local_counts_NL = counts_NE.reshape(ep, ep, e // ep)[:, me]  # [source, local expert]
  return out_plan, back_plan, local_counts_NL


def _local_expert_of_rows(local_counts_NL, rows: int):
  """Local expert id of every row of the receive buffer (sources in order, experts in order within a source);
  rows past the received total get id E_loc (a sentinel sorted last)."""
  n, e_loc = local_counts_NL.shape
  ends = jnp.cumsum(local_counts_NL.reshape(-1))
  row = jnp.arange(rows, dtype=jnp.int32)
  seg = jnp.searchsorted(ends, row, side="right").astype(jnp.int32)
  return jnp.where(seg < n * e_loc, seg % e_loc, e_loc)


def _grouped_ffn(x_RD, group_sizes_L, gate_up_EDCF, down_EFD, impl: str, interpret: bool):
  """Rows sorted by local expert; rows past sum(group_sizes) give zeros."""
  e, d, _, f = gate_up_EDCF.shape
  if impl == "pallas":
    from pallas_kernels.grouped_matmul import gmm
    matmul = functools.partial(gmm, interpret=interpret)
  else:
    matmul = jax.lax.ragged_dot
  h = swiglu(matmul(x_RD, gate_up_EDCF.reshape(e, d, 2 * f), group_sizes_L).reshape(-1, 2, f))
  return matmul(h, down_EFD, group_sizes_L)


def _ragged(x_AD, experts_A, gate_up_EDCF, down_EFD, *, ep: int, num_experts: int, collective, impl, interpret):
  a, d = x_AD.shape
  order_A, inverse_A, group_sizes_E = sort_assignments(experts_A[:, None], num_experts)
  x_sorted = x_AD[order_A]
  (in_off, send, out_off, recv), back_plan, local_counts_NL = _ragged_plan(group_sizes_E, ep)
  rows = a * ep  # worst case: every device sends all its assignments here
  buf = collective(x_sorted, jnp.zeros((rows, d), x_AD.dtype), in_off, send, out_off, recv)
  local_R = _local_expert_of_rows(local_counts_NL, rows)
  order_R = jnp.argsort(local_R, stable=True)
  inverse_R = jnp.zeros_like(order_R).at[order_R].set(jnp.arange(rows, dtype=order_R.dtype))
  y_sorted = _grouped_ffn(buf[order_R], local_counts_NL.sum(0), gate_up_EDCF, down_EFD, impl, interpret)
  y_buf = y_sorted[inverse_R]
  b_in, b_send, b_out, b_recv = back_plan
  y_back = collective(y_buf, jnp.zeros((a, d), x_AD.dtype), b_in, b_send, b_out, b_recv)
  return y_back[inverse_A], jnp.zeros((), jnp.int32)


def moe_expert_parallel(par: Parallel, x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, *, impl: str,
                        interpret: bool = False, local_capacity_factor: float = 1.25):
  """Routed-expert output [T, D] and the number of dropped assignments (summed over the mesh).

  Inputs are global arrays: tokens split over the batch axes, experts over `expert`, expert width over `tensor`.
  With one expert shard the local `impl` runs (`local_capacity_factor` applies to impl='capacity' only).
  """
  mesh, ep = par.mesh, par.mesh.shape["expert"]
  num_experts = gate_up_EDCF.shape[0]
  k = experts_TK.shape[1]
  t_local = x_TD.shape[0] // math.prod(mesh.shape[a] for a in BATCH_AXES)
  cap = capacity(t_local * k, num_experts, par.capacity_factor)

  def local(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD):
    t, d = x_TD.shape
    # The weights are the same on every data / fsdp shard; marking them varying there makes their gradient a psum
    # over those axes at this boundary (and lets custom-VJP kernels see matching types).
    gate_up_EDCF, down_EFD = jax.lax.pcast((gate_up_EDCF, down_EFD), ("data", "fsdp"), to="varying")
    # Likewise the tokens are the same on every tensor shard, where each shard computes a partial sum over its slice of
    # the expert width: varying there, their gradient is the psum of those partial input gradients.
    x_TD, scores_TK = jax.lax.pcast((x_TD, scores_TK), ("tensor",), to="varying")
    if ep == 1:
      y_TD, dropped = dispatch(impl, x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD, interpret=interpret,
                               capacity_factor=local_capacity_factor)
    else:
      x_AD = jnp.repeat(x_TD, k, axis=0) * scores_TK.reshape(-1, 1)
      experts_A = experts_TK.reshape(-1)
      if par.transport == "all_to_all":
        y_AD, dropped = _all_to_all_capacity(x_AD, experts_A, gate_up_EDCF, down_EFD, ep=ep,
                                             num_experts=num_experts, cap=cap)
      else:
        if par.transport == "ragged_all_to_all":
          collective = functools.partial(jax.lax.ragged_all_to_all, axis_name="expert")
        else:
          collective = functools.partial(ragged_all_gather, axis_name="expert", axis_size=ep)
        y_AD, dropped = _ragged(x_AD, experts_A, gate_up_EDCF, down_EFD, ep=ep, num_experts=num_experts,
                                collective=collective, impl=impl, interpret=interpret)
      y_TD = y_AD.reshape(t, k, d).sum(axis=1)
    y_TD = jax.lax.psum(y_TD, "tensor")  # partial sums over the expert width (also marks y unvarying over tensor)
    return y_TD, jax.lax.psum(dropped, BATCH_AXES)

  tokens = P(BATCH_AXES)
  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(tokens, tokens, tokens, P("expert", None, None, "tensor"), P("expert", "tensor", None)),
                     out_specs=(tokens, P()))
  return fn(x_TD, scores_TK, experts_TK, gate_up_EDCF, down_EFD)
