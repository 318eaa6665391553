"""Codistillation (the `distill` stage kind): soft targets from a teacher checkpoint mixed with the data's hard targets.

Per token, with student logits s, teacher logits t, temperature T and the weight alpha of the soft part:
    loss = (1 - alpha) * CE(s, target) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))
averaged over the loss-mask tokens (the T^2 keeps the soft gradients' scale independent of T, Hinton et al. 2015).
alpha moves from `distill.alpha_start` to `distill.alpha_end` over the stage (`distill.schedule`: linear, cosine or
constant): Llama 4 describes a dynamic weighting of soft and hard targets during codistillation from Behemoth; a
falling alpha leans on the teacher early and on the data late. The teacher (`distill.teacher`: a training workdir or
a Hugging Face directory, any size with the student's vocabulary) is loaded once and never updated.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import optax

from llama4_jax.config import ConfigError, ModelConfig
from llama4_jax.model import apply
from llama4_jax.train.step import TrainState, guarded_update

SCHEDULES = ("linear", "cosine", "constant")


def check_config(cfg, student: ModelConfig) -> None:
  """Settings and the teacher's location and vocabulary, before anything is compiled (reads configs only)."""
  d = cfg.distill
  if d.schedule not in SCHEDULES:
    raise ConfigError(f"distill.schedule={d.schedule!r}; expected one of {SCHEDULES}")
  for key in ("alpha_start", "alpha_end"):
    if not 0.0 <= d[key] <= 1.0:
      raise ConfigError(f"distill.{key} must lie in [0, 1], got {d[key]}")
  if not d.temperature > 0:
    raise ConfigError(f"distill.temperature must be > 0, got {d.temperature}")
  if student.vision is not None:
    raise ConfigError("distill stages train text models (model.vision must be off)")
  vocab = teacher_vocab(d.teacher)
  if vocab != student.vocab_size:
    raise ConfigError(f"distill.teacher={d.teacher!r} has vocab_size={vocab}, the student {student.vocab_size}: "
                      "soft targets need one vocabulary")


def teacher_vocab(path: str) -> int:
  import json
  if not path or not os.path.isdir(path):
    raise ConfigError(f"distill.teacher={path!r} is not a directory (a training workdir or a Hugging Face "
                      "checkpoint directory)")
  if os.path.isfile(os.path.join(path, "config.json")):
    with open(os.path.join(path, "config.json")) as f:
      hf = json.load(f)
    return int(hf.get("text_config", hf)["vocab_size"])
  if os.path.isfile(os.path.join(path, "experiment.json")):
    with open(os.path.join(path, "experiment.json")) as f:
      stages = json.load(f)
    return int(list(stages.values())[-1]["model"]["vocab_size"])
  raise ConfigError(f"distill.teacher={path!r} holds neither experiment.json (a training workdir) nor config.json "
                    "(a Hugging Face checkpoint)")


def alpha_at(step: int, total: int, start: float, end: float, schedule: str) -> float:
  """The soft-target weight at `step` of `total` (start at step 0, end at the last step)."""
  frac = min(max(step / max(total - 1, 1), 0.0), 1.0)
  if schedule == "constant":
    return start
  if schedule == "cosine":
    frac = 0.5 * (1.0 - math.cos(math.pi * frac))
  return start + (end - start) * frac


def distill_loss(student_BLV, teacher_BLV, targets_BL, mask_BL, alpha, temperature: float):
  """(loss, {'ce', 'kl'}) as in the module docstring; all three are means over the masked tokens."""
  s = student_BLV.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher_BLV.astype(jnp.float32))
  w = mask_BL.astype(jnp.float32)
  ntok = jnp.maximum(jnp.sum(w), 1.0)
  logp = jax.nn.log_softmax(s, axis=-1)
  ce = -jnp.sum(jnp.take_along_axis(logp, targets_BL[..., None], axis=-1)[..., 0] * w) / ntok
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  kl = jnp.sum(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1) * w) / ntok
  loss = (1.0 - alpha) * ce + alpha * temperature**2 * kl
  return loss, {"ce": ce, "kl": kl}


def distill_step(state: TrainState, batch, teacher_params, alpha, *, model_cfg: ModelConfig,
                 teacher_cfg: ModelConfig, tx, temperature: float):
  """One update of the student against the frozen teacher on a packed LM batch; alpha is a traced scalar."""
  args = (batch["inputs"], batch["positions"], batch["segment_ids"])
  teacher_BLV, _ = apply(teacher_cfg, teacher_params, *args)

  def objective(params):
    student_BLV, _ = apply(model_cfg, params, *args)
    return distill_loss(student_BLV, teacher_BLV, batch["targets"], batch["loss_mask"], alpha, temperature)

  (loss, parts), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  state, skipped = guarded_update(state, grads, loss, tx)
  return state, {"loss": loss, **parts, "alpha": jnp.asarray(alpha, jnp.float32), "skipped": skipped,
                 "grad_norm": optax.tree.norm(grads), "tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32))}
