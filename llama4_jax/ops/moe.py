"""Llama 4 mixture-of-experts routing and dispatch, as pure functions over flattened tokens.

Routing (Llama 4): top-k on the raw router logits, score = sigmoid(logit) with no renormalisation, and the score
multiplies the expert *input*. Two dispatch paths give the same result:
  * `moe_sort`  - dropless: assignments sorted by expert, grouped matmuls over contiguous groups (`ragged_dot`), so
                  compute follows the experts actually used,
  * `moe_dense` - the test oracle: every expert on every token with zero-scaled inputs for unselected experts, which
                  is exact because a bias-free SwiGLU maps 0 to 0 (this is what the Hugging Face reference computes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def route(x_TD, router_DE, top_k: int):
  """Returns (scores_TK in x.dtype, experts_TK int32, logits_TE)."""
  logits_TE = jnp.einsum("td,de->te", x_TD, router_DE.astype(x_TD.dtype))
  top_logits_TK, experts_TK = jax.lax.top_k(logits_TE, top_k)
  scores_TK = jax.nn.sigmoid(top_logits_TK.astype(jnp.float32)).astype(x_TD.dtype)
  return scores_TK, experts_TK.astype(jnp.int32), logits_TE


def _swiglu(h_gate, h_up):
  return jax.nn.silu(h_gate) * h_up


def moe_dense(x_TD, scores_TK, experts_TK, gate_EDF, up_EDF, down_EFD):
  """Oracle: all experts on all tokens, input scaled by the (zero if unselected) router score."""
  t = x_TD.shape[0]
  e = gate_EDF.shape[0]
  scores_TE = jnp.zeros((t, e), x_TD.dtype).at[jnp.arange(t)[:, None], experts_TK].set(scores_TK)
  x_ETD = scores_TE.T[:, :, None] * x_TD[None]
  h_ETF = _swiglu(jnp.einsum("etd,edf->etf", x_ETD, gate_EDF), jnp.einsum("etd,edf->etf", x_ETD, up_EDF))
  return jnp.einsum("etf,efd->td", h_ETF, down_EFD)


def sort_assignments(experts_TK, num_experts: int):
  """Order of the T*K (token, slot) assignments grouped by expert, its inverse, and the group sizes."""
  flat_A = experts_TK.reshape(-1)
  order_A = jnp.argsort(flat_A, stable=True)
  inverse_A = jnp.zeros_like(order_A).at[order_A].set(jnp.arange(order_A.shape[0], dtype=order_A.dtype))
  group_sizes_E = jnp.bincount(flat_A, length=num_experts).astype(jnp.int32)
  return order_A, inverse_A, group_sizes_E


def moe_sort(x_TD, scores_TK, experts_TK, gate_EDF, up_EDF, down_EFD):
  """Dropless sort-based dispatch with grouped matmuls; equals `moe_dense`."""
  t, k = experts_TK.shape
  order_A, inverse_A, group_sizes_E = sort_assignments(experts_TK, gate_EDF.shape[0])
  token_A = order_A // k
  x_AD = x_TD[token_A] * scores_TK.reshape(-1)[order_A][:, None]
  h_AF = _swiglu(jax.lax.ragged_dot(x_AD, gate_EDF, group_sizes_E), jax.lax.ragged_dot(x_AD, up_EDF, group_sizes_E))
  y_AD = jax.lax.ragged_dot(h_AF, down_EFD, group_sizes_E)
  # Gather back to (token, slot) order and sum the k slots: deterministic, unlike a scatter-add.
  return y_AD[inverse_A].reshape(t, k, -1).sum(axis=1)


DISPATCH = {"sort": moe_sort, "dense": moe_dense}


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
