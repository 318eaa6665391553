"""Direct preference optimisation losses: sequence log-probs, DPO (with cDPO label smoothing) and IPO.

Pure, jit-able JAX functions in float32; no model code. Shape suffixes as in the README; B counts preference pairs
(or sequences, for `sequence_logprob`).

With each log-prob a sum over response tokens (prompt tokens masked out),
  Delta = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]      (w = chosen, l = rejected)
* "sigmoid" (Rafailov et al. 2023, Eq. 7):  L = -log sigmoid(beta * Delta)
  with label smoothing eps (conservative DPO, per Mitchell: labels assumed flipped with probability eps):
  L = -(1 - eps) log sigmoid(beta * Delta) - eps log sigmoid(-beta * Delta)
* "ipo" (Azar et al. 2023):  L = (Delta - 1 / (2 beta))^2. The IPO paper and TRL feed length-averaged log-probs;
  pass per-token means instead of sums to reproduce that.
Implicit rewards for logging: r_w = beta (log pi(y_w) - log ref(y_w)), r_l likewise; accuracy = mean(r_w > r_l).
(Formulas and metric names as in shared/training_notes.md section 2.4 and Tunix's dpo_trainer.py.)
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from llama4_jax.train.rl import token_logprobs

DPO_KINDS = ("sigmoid", "ipo")


def sequence_logprob(logits_BLV: jax.Array, tokens_BL: jax.Array, response_mask_BL: jax.Array) -> jax.Array:
  """float32 [B]: sum over positions with response_mask_BL != 0 of log p(tokens_BL[:, t] | logits_BLV[:, t]).

  Same shift convention as `rl.token_logprobs`: tokens_BL are the targets (inputs shifted left by one), and the mask is
  aligned with them, i.e. 1 where the *predicted* token belongs to the response.
  """
  mask_BL = jnp.asarray(response_mask_BL).astype(jnp.float32)
  return jnp.sum(token_logprobs(logits_BLV, tokens_BL) * mask_BL, axis=-1)


def _check_dpo_args(beta, label_smoothing, kind: str) -> None:
  if kind not in DPO_KINDS:
    raise ValueError(f"unknown DPO kind {kind!r}; expected one of {DPO_KINDS}")
  if isinstance(beta, numbers.Real) and not beta > 0:
    raise ValueError(f"beta={beta!r} must be > 0")
  if isinstance(label_smoothing, numbers.Real):
    # eps = 0.5 makes the loss symmetric in chosen/rejected: no preference signal is left.
    if not 0.0 <= label_smoothing < 0.5:
      raise ValueError(f"label_smoothing={label_smoothing!r} must lie in [0, 0.5)")
    if kind == "ipo" and label_smoothing != 0:
      raise ValueError(f"label_smoothing={label_smoothing!r} is not defined for kind 'ipo'; use 0")


def dpo_loss(pi_chosen: jax.Array, pi_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float, label_smoothing: float = 0.0, kind: str = "sigmoid") -> tuple[jax.Array, dict]:
  """(mean loss over pairs, metrics) from [B] sequence log-probs of policy (pi_*) and frozen reference (ref_*).

  Metrics (means over pairs): chosen_reward beta (pi_c - ref_c), rejected_reward beta (pi_r - ref_r), reward_margin
  (their difference), reward_accuracy (fraction with margin > 0). For the reference-free variant pass zeros as ref.
  Pass beta/label_smoothing as Python floats to have them validated (traced values are not checked).
  """
  _check_dpo_args(beta, label_smoothing, kind)
  shapes = [jnp.shape(x) for x in (pi_chosen, pi_rejected, ref_chosen, ref_rejected)]
  if len(set(shapes)) != 1:
    raise ValueError(f"pi_chosen, pi_rejected, ref_chosen, ref_rejected must share one shape, got {shapes}")
  f32 = jnp.float32
  chosen_B = jnp.asarray(pi_chosen, f32) - jnp.asarray(ref_chosen, f32)
  rejected_B = jnp.asarray(pi_rejected, f32) - jnp.asarray(ref_rejected, f32)
  delta_B = chosen_B - rejected_B
  if kind == "sigmoid":
    # log_sigmoid stays finite for large |beta * Delta| where log(sigmoid(.)) would underflow to -inf.
    loss_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * delta_B) \
        - label_smoothing * jax.nn.log_sigmoid(-beta * delta_B)
  else:
    loss_B = jnp.square(delta_B - 1.0 / (2.0 * beta))
  margin_B = beta * delta_B
  metrics = {"chosen_reward": jnp.mean(beta * chosen_B), "rejected_reward": jnp.mean(beta * rejected_B),
             "reward_margin": jnp.mean(margin_B), "reward_accuracy": jnp.mean((margin_B > 0).astype(f32))}
  return jnp.mean(loss_B), metrics
