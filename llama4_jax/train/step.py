"""Pure train and eval steps: `train_step(state, batch, rng) -> (state, metrics)`.

A batch is a dict of int32 [B, L] arrays: inputs, targets, positions, segment_ids, loss_mask (and, for a vision
model, float32 `pixels` [B, N, C, S, S]: each row's image tiles in order). With gradient
accumulation the batch is split into `micro_batches` equal slices whose summed-token gradients are added in a scan,
so the update equals the large-batch one (the balancing loss, a per-batch statistic, is averaged over slices).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llama4_jax.config import ModelConfig
from llama4_jax.model import apply


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The parts of `config.train` the step function needs, as a hashable value."""

  micro_batches: int = 1
  z_loss: float = 0.0
  load_balance_coef: float = 0.0

  @classmethod
  def from_config(cls, train_cfg) -> "LossConfig":
    return cls(int(train_cfg.micro_batches), float(train_cfg.z_loss), float(train_cfg.load_balance_coef))


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_in_a_row: jax.Array  # consecutive skipped updates
  nonfinite_total: jax.Array


def synthetic_batch(vocab: int, batch: int, seq: int, seed: int = 0, positions: bool = True) -> dict:
  """A random batch in the train-step format, one document per row (benchmarks, smoke checks). `positions=False`
  leaves out the positions and segment ids, as a batch of whole unpacked rows may: the model then knows statically
  that every row is one document from slot 0 (llama4_jax.model.transformer)."""
  rs = np.random.RandomState(seed)
  ones = np.ones((batch, seq), np.int32)
  out = {"inputs": rs.randint(0, vocab, (batch, seq)).astype(np.int32),
         "targets": rs.randint(0, vocab, (batch, seq)).astype(np.int32), "loss_mask": ones}
  if positions:
    out.update(positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(), segment_ids=ones.copy())
  return out


def init_state(params, tx) -> TrainState:
  zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers: the step donates them)
  return TrainState(step=zero(), params=params, opt_state=tx.init(params), nonfinite_in_a_row=zero(),
                    nonfinite_total=zero())


def token_losses(logits_BLV, targets_BL):
  """(cross entropy, log partition) per token, float32."""
  logz_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  return logz_BL - target_logit_BL, logz_BL


def balance_loss(moe_stats) -> jax.Array:
  """Switch-style E * sum_e f_e * P_e, averaged over MoE layers (and scanned blocks)."""
  terms = [stats["expert_fraction"].shape[-1] * jnp.sum(stats["expert_fraction"] * stats["router_prob"], -1)
           for stats in jax.tree_util.tree_leaves(moe_stats, is_leaf=lambda x: isinstance(x, dict) and
                                                  "expert_fraction" in x)]
  return jnp.mean(jnp.concatenate([t.reshape(-1) for t in terms])) if terms else jnp.zeros((), jnp.float32)


def sums(params, batch, model_cfg: ModelConfig, z_loss: float, balance_coef: float, parallel=None):
  """Token-summed objective pieces of one (micro-)batch; the caller divides by the token count."""
  logits, aux = apply(model_cfg, params, batch["inputs"], batch.get("positions"), batch.get("segment_ids"),
                      parallel=parallel, pixels_BNCHW=batch.get("pixels"))
  ce_BL, logz_BL = token_losses(logits, batch["targets"])
  w_BL = batch["loss_mask"].astype(jnp.float32)
  ntok = jnp.sum(w_BL)
  ce = jnp.sum(ce_BL * w_BL)
  zl = jnp.sum(jnp.square(logz_BL) * w_BL)
  bal = balance_loss(aux["moe"])
  return {"ce": ce, "z": zl, "balance": bal, "tokens": ntok}, aux["moe"]


def _split_micro(batch, n: int):
  """Micro-batch i takes rows i, i + n, i + 2n, ...: with the batch split over devices, every device keeps an equal
  share of every micro-batch (contiguous slices would put each micro-batch on a few devices only)."""
  return jax.tree_util.tree_map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def loss_and_grads(params, batch, model_cfg, train_cfg, parallel=None):
  """Gradients of (sum CE + z * sum logZ^2) / tokens + balance * mean balance, accumulated over micro-batches."""
  n = train_cfg.micro_batches
  total_tokens = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)

  def objective(p, micro):
    s, stats = sums(p, micro, model_cfg, train_cfg.z_loss, train_cfg.load_balance_coef, parallel)
    obj = (s["ce"] + train_cfg.z_loss * s["z"]) / total_tokens + train_cfg.load_balance_coef * s["balance"] / n
    return obj, (s, stats)

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if n == 1:
    (_, (s, stats)), grads = grad_fn(params, batch)
    return s, stats, grads

  def body(acc, micro):
    (_, (s, stats)), g = grad_fn(params, micro)
    acc_s, acc_g = acc
    return (jax.tree_util.tree_map(jnp.add, acc_s, s), jax.tree_util.tree_map(jnp.add, acc_g, g)), stats

  zero_s = {k: jnp.zeros((), jnp.float32) for k in ("ce", "z", "balance", "tokens")}
  zero_g = jax.tree_util.tree_map(jnp.zeros_like, params)
  (s, grads), stats = jax.lax.scan(body, (zero_s, zero_g), _split_micro(batch, n))
  s = dict(s, balance=s["balance"] / n)
  return s, jax.tree_util.tree_map(lambda x: x.mean(0), stats), grads


def moe_dropped(moe_stats) -> jax.Array:
  """Routed assignments dropped over capacity (expert-parallel all_to_all transport), summed over MoE layers."""
  leaves = [stats["dropped"] for stats in jax.tree_util.tree_leaves(
      moe_stats, is_leaf=lambda x: isinstance(x, dict) and "dropped" in x)]
  return sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.int32))


def guarded_update(state: TrainState, grads, loss: jax.Array, tx) -> tuple[TrainState, jax.Array]:
  """Applies `tx` unless the loss or a gradient is non-finite; then keeps params and optimizer state and counts the
  skip. Returns (state, skipped int32). Shared by every stage's update step.

  The gradient test is on the global norm (the one clipping and the metrics compute as well, so no pass of its
  own over the gradients): it is NaN or inf when any entry is, and also when the norm itself overflows the float
  range, an update that clipping could not make sane either.

  The choice is a `lax.cond`, not a `where` over the new and old trees: with `where`, XLA:CPU recomputed the new
  moments inside the parameter update from the old ones, so it copied every moment buffer before overwriting it
  in place (3% of the tiny model's train step); the branch reads the new moments once they are written."""
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))

  def apply(params, opt_state, grads):
    updates, new_opt = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt

  def keep(params, opt_state, grads):
    del grads
    return params, opt_state

  new_params, new_opt = jax.lax.cond(finite, apply, keep, state.params, state.opt_state, grads)
  skipped = jnp.logical_not(finite).astype(jnp.int32)
  return TrainState(step=state.step + 1, params=new_params, opt_state=new_opt,
                    nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
                    nonfinite_total=state.nonfinite_total + skipped), skipped


def train_step(state: TrainState, batch, rng, *, model_cfg: ModelConfig, train_cfg, tx, schedule, parallel=None):
  """One optimizer update. A non-finite loss or gradient skips the update and is counted.

  `parallel` (sharding.Parallel) runs the model sharded over its mesh; jit this with the state and batch shardings.
  """
  del rng  # the model has no dropout; kept for the (state, batch, rng) contract used by later stages
  s, stats, grads = loss_and_grads(state.params, batch, model_cfg, train_cfg, parallel)
  tokens = jnp.maximum(s["tokens"], 1.0)
  loss = s["ce"] / tokens
  new_state, skipped = guarded_update(state, grads, loss, tx)
  metrics = {"loss": loss, "z_loss": s["z"] / tokens, "balance_loss": s["balance"],
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
             "tokens": s["tokens"], "skipped": skipped, "moe_dropped": moe_dropped(stats), "expert_load": stats}
  return new_state, metrics


def eval_step(params, batch, *, model_cfg: ModelConfig, parallel=None):
  """Summed cross entropy and token count over one batch."""
  s, _ = sums(params, batch, model_cfg, 0.0, 0.0, parallel)
  return {"ce": s["ce"], "tokens": s["tokens"]}
