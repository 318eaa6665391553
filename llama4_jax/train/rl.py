"""Online-RL math: token log-probs, group advantages, the clipped policy loss and prompt selection.

Pure, jit-able JAX functions (float32 math) plus host-side numpy helpers that choose prompts. There is no model code
here: the caller runs the policy, the behaviour ("old") policy and the frozen reference and passes log-probs in.

Shape suffixes as in the README, plus two for groups of rollouts: P prompts and G samples per prompt (the group
size). In this module G never means kv heads and P never means patches; B = P * G flattened rollouts.

Sources (as named in shared/training_notes.md, sections 0 and 2.4 to 2.6):
* GRPO (DeepSeekMath): A_i = (r_i - mean(r)) / (std(r) + eps) within one prompt's group; PPO clip; KL to a reference.
* Dr. GRPO: A_i = r_i - mean(r); dropping the std removes the up-weighting of nearly solved/unsolved prompts.
* RLOO: A_i = r_i - mean of the other G - 1 rewards (leave-one-out baseline, no std).
* DAPO (arXiv 2503.14476): clip-higher, the ratio clipped to [1 - clip_low, 1 + clip_high] (0.2 / 0.28); token-level
  loss aggregation; dynamic sampling (drop groups with zero advantage, refill the batch); no KL.
* k3 KL estimator (J. Schulman, "Approximating KL divergence", as used by GRPO):
  exp(ref - new) - (ref - new) - 1, which is >= 0 per token and unbiased for KL(new || ref) on samples from new.
* Llama 4 blog: "dynamically filtering out prompts with zero advantage" (`zero_advantage_mask`, `GroupRefill`) and
  "continually filter and retain only medium-to-hard difficulty prompts" (`PassRatePool`).
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ADVANTAGE_KINDS = ("grpo", "rloo", "dr_grpo")
AGGREGATIONS = ("token_mean", "seq_mean")
GRPO_EPS = 1e-6  # as Tunix grpo_core; keeps a constant group finite (those are zeroed exactly anyway)


def token_logprobs(logits_BLV: jax.Array, tokens_BL: jax.Array) -> jax.Array:
  """log p(tokens_BL[b, t]) under softmax(logits_BLV[b, t]), float32 [B, L].

  No shift happens here: `logits_BLV[:, t]` must be the prediction made after reading position t, and
  `tokens_BL[:, t]` the token it predicts (the inputs shifted left by one, i.e. the `targets` of train/step.py).
  Computed as log_softmax evaluated at the target only (logit - logsumexp), so no [B, L, V] log-prob buffer is kept.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  logz_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  picked_BL = jnp.take_along_axis(logits_BLV, tokens_BL.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return picked_BL - logz_BL


def entropy(logits_BLV: jax.Array, mask_BL: jax.Array) -> jax.Array:
  """Mean softmax entropy (nats) over the tokens where mask_BL is nonzero, float32 scalar (0 for an empty mask)."""
  logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  # entr(p) = -p log p with entr(0) = 0, so logits of -inf (banned tokens) give no NaN.
  ent_BL = jnp.sum(jax.scipy.special.entr(jnp.exp(logp_BLV)), axis=-1)
  return _token_mean(ent_BL, mask_BL.astype(jnp.float32))


def zero_advantage_mask(rewards_PG: jax.Array) -> jax.Array:
  """bool [P]: True where the group's rewards are not all equal (keep), False where they are (zero advantage: drop).

  Exact comparison: equal rewards give exactly zero advantage under every kind (see `group_advantages`). A group with a
  NaN reward compares False and is dropped too.
  """
  rewards_PG = jnp.asarray(rewards_PG)
  return jnp.max(rewards_PG, axis=-1) > jnp.min(rewards_PG, axis=-1)


def group_advantages(rewards_PG: jax.Array, kind: str = "grpo", eps: float = GRPO_EPS) -> jax.Array:
  """Per-sample advantages, float32 [P, G], each computed within its prompt's group of G samples.

  grpo:    (r - mean) / (std + eps), with std the SAMPLE std (ddof=1, divisor G - 1). Chosen to match Tunix's
           grpo_core and TRL (torch.std is unbiased by default), so our numbers compare with those references.
  rloo:    r_i - (sum_j r_j - r_i) / (G - 1), the mean of the other G - 1 samples.
  dr_grpo: r - mean.
  A group with all rewards equal gets exactly 0 under every kind: its float mean can miss the common value by an ulp,
  which the grpo division by (0 + eps) would blow up to a spurious O(0.01) advantage.
  """
  if kind not in ADVANTAGE_KINDS:
    raise ValueError(f"unknown advantage kind {kind!r}; expected one of {ADVANTAGE_KINDS}")
  if jnp.ndim(rewards_PG) != 2:
    raise ValueError(f"rewards_PG must be [prompts, group], got shape {jnp.shape(rewards_PG)}")
  g = rewards_PG.shape[-1]
  if g < 2:
    raise ValueError(f"group size {g} < 2: an advantage needs at least two samples per prompt")
  r_PG = jnp.asarray(rewards_PG, jnp.float32)
  if kind == "rloo":
    adv_PG = r_PG - (jnp.sum(r_PG, axis=-1, keepdims=True) - r_PG) / (g - 1)
  else:
    adv_PG = r_PG - jnp.mean(r_PG, axis=-1, keepdims=True)
    if kind == "grpo":
      adv_PG = adv_PG / (jnp.std(r_PG, axis=-1, keepdims=True, ddof=1) + eps)
  return jnp.where(zero_advantage_mask(r_PG)[:, None], adv_PG, 0.0)


def _token_mean(x_BL: jax.Array, w_BL: jax.Array) -> jax.Array:
  return jnp.sum(x_BL * w_BL) / jnp.maximum(jnp.sum(w_BL), 1.0)


def _aggregate(loss_BL: jax.Array, w_BL: jax.Array, aggregation: str) -> jax.Array:
  if aggregation == "token_mean":  # DAPO: every response token weighs the same, long answers count more
    return _token_mean(loss_BL, w_BL)
  # seq_mean (GRPO): mean over each sequence's tokens, then over sequences that have at least one token.
  ntok_B = jnp.sum(w_BL, axis=-1)
  per_seq_B = jnp.sum(loss_BL * w_BL, axis=-1) / jnp.maximum(ntok_B, 1.0)
  has_B = (ntok_B > 0).astype(jnp.float32)
  return jnp.sum(per_seq_B * has_B) / jnp.maximum(jnp.sum(has_B), 1.0)


def _is_number(x) -> bool:
  """A concrete Python/numpy scalar, which can be checked; traced or array values are left to the caller."""
  return isinstance(x, numbers.Real)


def _check_policy_args(shape, adv_shape, mask_shape, clip_low, clip_high, kl_coef, has_ref: bool,
                       aggregation: str) -> None:
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
  if _is_number(clip_low) and not 0.0 <= clip_low < 1.0:
    raise ValueError(f"clip_low={clip_low!r} must lie in [0, 1): the lower ratio bound 1 - clip_low must be > 0")
  if _is_number(clip_high) and not clip_high >= 0.0:
    raise ValueError(f"clip_high={clip_high!r} must be >= 0")
  if _is_number(kl_coef) and not kl_coef >= 0.0:
    raise ValueError(f"kl_coef={kl_coef!r} must be >= 0")
  if _is_number(kl_coef) and kl_coef > 0 and not has_ref:
    raise ValueError(f"kl_coef={kl_coef!r} > 0 needs logp_ref (the frozen reference's token log-probs)")
  if len(shape) != 2 or mask_shape != shape:
    raise ValueError(f"logp_new, logp_old and mask must share one [B, L] shape, got {shape} and mask {mask_shape}")
  if adv_shape not in (shape, shape[:1]):
    raise ValueError(f"advantages must be [B] or [B, L] = {shape}, got {adv_shape}")


def policy_loss(logp_new: jax.Array, logp_old: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip_low: float = 0.2, clip_high: float = 0.2, kl_coef: float = 0.0,
                logp_ref: jax.Array | None = None, aggregation: str = "token_mean") -> tuple[jax.Array, dict]:
  """PPO clipped surrogate with asymmetric clip and an optional k3 KL penalty; returns (loss, metrics).

  logp_new, logp_old, logp_ref: [B, L] token log-probs (`token_logprobs`) of the rollout tokens under the policy being
  trained, the policy that sampled them, and the frozen reference. advantages: [B] (one per sequence, broadcast over
  its tokens, e.g. `group_advantages(...).reshape(-1)`) or [B, L]. mask: [B, L], 1 on response tokens, 0 elsewhere.
  Per token, with ratio = exp(logp_new - logp_old):
    loss_t = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + kl_coef * k3_t,
    k3_t = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1      (only when logp_ref is given)
  aggregated by "token_mean" (sum over all masked tokens / their count; DAPO) or "seq_mean" (per-sequence token mean,
  then mean over sequences with at least one token; original GRPO). clip_low = clip_high gives symmetric PPO.
  Metrics (masked token means): clip_fraction (share of tokens whose clip is active, so their gradient is zero:
  A > 0 and ratio > 1 + clip_high, or A < 0 and ratio < 1 - clip_low), ratio_mean, kl_old (k3 estimate of
  KL(old || new): ratio - 1 - log ratio), approx_kl (k3 to the reference; only when logp_ref is given), tokens.
  Pass clip_low/clip_high/kl_coef as Python floats to have them validated (traced values are not checked).
  """
  shape, adv_shape, mask_shape = jnp.shape(logp_new), jnp.shape(advantages), jnp.shape(mask)
  if jnp.shape(logp_old) != shape or (logp_ref is not None and jnp.shape(logp_ref) != shape):
    raise ValueError(f"logp_old {jnp.shape(logp_old)} / logp_ref must match logp_new {shape}")
  _check_policy_args(shape, adv_shape, mask_shape, clip_low, clip_high, kl_coef, logp_ref is not None, aggregation)
  f32 = jnp.float32
  logp_new, logp_old = jnp.asarray(logp_new, f32), jnp.asarray(logp_old, f32)
  adv_BL = jnp.asarray(advantages, f32)
  adv_BL = jnp.broadcast_to(adv_BL[:, None] if adv_BL.ndim == 1 else adv_BL, shape)
  w_BL = jnp.asarray(mask).astype(f32)

  log_ratio_BL = logp_new - logp_old
  ratio_BL = jnp.exp(log_ratio_BL)
  clipped_BL = jnp.clip(ratio_BL, 1.0 - clip_low, 1.0 + clip_high)
  loss_BL = -jnp.minimum(ratio_BL * adv_BL, clipped_BL * adv_BL)
  active_BL = ((adv_BL > 0) & (ratio_BL > 1.0 + clip_high)) | ((adv_BL < 0) & (ratio_BL < 1.0 - clip_low))
  metrics = {"clip_fraction": _token_mean(active_BL.astype(f32), w_BL),
             "ratio_mean": _token_mean(ratio_BL, w_BL),
             "kl_old": _token_mean(ratio_BL - 1.0 - log_ratio_BL, w_BL),
             "tokens": jnp.sum(w_BL)}
  if logp_ref is not None:
    d_BL = jnp.asarray(logp_ref, f32) - logp_new
    kl_BL = jnp.exp(d_BL) - d_BL - 1.0
    loss_BL = loss_BL + kl_coef * kl_BL
    metrics["approx_kl"] = _token_mean(kl_BL, w_BL)
  return _aggregate(loss_BL, w_BL, aggregation), metrics


class GroupRefill:
  """DAPO dynamic sampling on the host: keep scored groups that have reward variance until `batch_prompts` are kept.

  `add(rewards_PG, items)` takes one generation round (P prompts x G rewards, plus one item per prompt such as its
  rollouts); groups with all rewards equal are counted as `filtered` and dropped. Kept groups beyond the batch are
  counted as `overflow` and discarded rather than saved for the next step, where they would be off-policy (as in verl's
  DAPO recipe, which truncates to the train batch). `pop_batch()` returns the full batch and resets the counts.
  """

  def __init__(self, batch_prompts: int):
    if batch_prompts < 1:
      raise ValueError(f"batch_prompts={batch_prompts!r} must be >= 1")
    self.batch_prompts = batch_prompts
    self._reset()

  def _reset(self) -> None:
    self._items: list = []
    self._rewards: list[np.ndarray] = []
    self.seen = self.filtered = self.overflow = self.rounds = 0

  @property
  def kept(self) -> int:
    return len(self._items)

  @property
  def full(self) -> bool:
    return self.kept >= self.batch_prompts

  def add(self, rewards_PG, items: Sequence | None = None) -> bool:
    """Adds one round of scored groups; returns whether the batch is now full."""
    rewards_PG = np.asarray(rewards_PG, np.float32)
    if rewards_PG.ndim != 2:
      raise ValueError(f"rewards_PG must be [prompts, group], got shape {rewards_PG.shape}")
    items = list(range(self.seen, self.seen + len(rewards_PG))) if items is None else list(items)
    if len(items) != len(rewards_PG):
      raise ValueError(f"{len(items)} items for {len(rewards_PG)} groups")
    keep_P = np.asarray(zero_advantage_mask(rewards_PG))
    self.rounds += 1
    self.seen += len(rewards_PG)
    self.filtered += int(np.sum(~keep_P))
    for i in np.flatnonzero(keep_P):
      if self.full:
        self.overflow += 1
      else:
        self._items.append(items[i])
        self._rewards.append(rewards_PG[i])
    return self.full

  def pop_batch(self) -> tuple[list, np.ndarray, dict]:
    """(items, rewards [batch_prompts, G], counts of this batch); resets for the next batch."""
    if not self.full:
      raise RuntimeError(f"batch not full: {self.kept} of {self.batch_prompts} groups kept")
    stats = {"rounds": self.rounds, "groups_seen": self.seen, "groups_kept": self.kept,
             "groups_filtered": self.filtered, "groups_overflow": self.overflow,
             "filtered_fraction": self.filtered / max(self.seen, 1)}
    items, rewards = self._items, np.stack(self._rewards)
    self._reset()
    return items, rewards, stats


  def take(self) -> tuple[list, np.ndarray]:
    """(items, rewards [kept, G]) of whatever was kept, full or not (kept may be 0); resets like `pop_batch`."""
    g = self._rewards[0].shape[-1] if self._rewards else 0
    items, rewards = self._items, (np.stack(self._rewards) if self._rewards else np.zeros((0, g), np.float32))
    self._reset()
    return items, rewards


def refill(stream: Iterable[tuple], batch_prompts: int, max_rounds: int | None = None) -> tuple[list, np.ndarray, dict]:
  """Draws (rewards_PG, items) rounds from `stream` into a `GroupRefill` until full; returns its `pop_batch()`.

  Raises RuntimeError when the stream ends, or `max_rounds` rounds pass, before the batch is full (verl likewise caps
  the generation rounds): a policy that solves or fails everything would otherwise spin forever.
  """
  acc = GroupRefill(batch_prompts)
  for rewards_PG, items in stream:
    if acc.add(rewards_PG, items):
      return acc.pop_batch()
    if max_rounds is not None and acc.rounds >= max_rounds:
      break
  raise RuntimeError(f"only {acc.kept} of {batch_prompts} groups with reward variance after {acc.rounds} rounds "
                     f"({acc.filtered} of {acc.seen} filtered)")


class PassRatePool:
  """Running pass rate per prompt and sampling biased to medium-to-hard prompts (continuous online RL).

  Estimate: p_hat = the first observed pass rate, then p_hat <- decay * p_hat + (1 - decay) * rate on every later
  observation (an exponential moving average, so the estimate follows the improving policy).
  Band: a seen prompt is "in band" when low <= p_hat <= high and 0 < p_hat < 1 (a group that always fails or always
  passes has zero advantage, so p_hat in {0, 1} is never in band whatever low/high say).
  Sampling weight: 1 for an unseen prompt (it must be measured) and for an in-band prompt; 0 for a prompt with
  p_hat = 1 (solved every time it was seen: retired); `revisit_weight` for every other seen prompt (too easy, or too
  hard incl. never solved), so their estimates still refresh as the policy changes. `sample` draws without
  replacement in proportion to the weights, or with replacement when fewer than n prompts have positive weight.
  Refresh: `needs_refresh(step)` is True every `refresh_every` steps (step 0 included), when the caller re-measures
  pass rates with the current policy and calls `update`.
  """

  def __init__(self, prompt_ids: Sequence[Hashable], low: float = 0.0, high: float = 0.8, decay: float = 0.5,
               refresh_every: int = 100, revisit_weight: float = 0.05):
    if not 0.0 <= low <= high <= 1.0:
      raise ValueError(f"band [low={low!r}, high={high!r}] must satisfy 0 <= low <= high <= 1")
    if not 0.0 <= decay < 1.0:
      raise ValueError(f"decay={decay!r} must lie in [0, 1)")
    if refresh_every < 1:
      raise ValueError(f"refresh_every={refresh_every!r} must be >= 1")
    if not 0.0 <= revisit_weight <= 1.0:
      raise ValueError(f"revisit_weight={revisit_weight!r} must lie in [0, 1]")
    ids = list(prompt_ids)
    self._index = {pid: i for i, pid in enumerate(ids)}
    if len(self._index) != len(ids) or not ids:
      raise ValueError("prompt_ids must be a non-empty sequence of distinct ids")
    self.prompt_ids = np.asarray(ids)
    self.low, self.high, self.decay = low, high, decay
    self.refresh_every, self.revisit_weight = refresh_every, revisit_weight
    self.pass_rate = np.full(len(ids), np.nan)  # NaN = never measured
    self.observations = np.zeros(len(ids), np.int64)

  def update(self, prompt_ids: Sequence[Hashable], pass_rates: Sequence[float]) -> None:
    """Folds in one observed pass rate (fraction of a group's samples that passed) per prompt id, in order."""
    ids, rates = list(prompt_ids), np.asarray(pass_rates, np.float64).reshape(-1)
    if len(ids) != len(rates):
      raise ValueError(f"{len(ids)} prompt ids for {len(rates)} pass rates")
    for pid, rate in zip(ids, rates):  # validate everything first: a bad call leaves the pool unchanged
      if pid not in self._index:
        raise ValueError(f"unknown prompt id {pid!r}")
      if not 0.0 <= rate <= 1.0:
        raise ValueError(f"pass rate {rate!r} for prompt {pid!r} is outside [0, 1]")
    for pid, rate in zip(ids, rates):
      i = self._index[pid]
      old = self.pass_rate[i]
      self.pass_rate[i] = rate if np.isnan(old) else self.decay * old + (1.0 - self.decay) * rate
      self.observations[i] += 1

  def in_band(self) -> np.ndarray:
    p = self.pass_rate
    seen = ~np.isnan(p)
    with np.errstate(invalid="ignore"):
      return seen & (p >= self.low) & (p <= self.high) & (p > 0.0) & (p < 1.0)

  def weights(self) -> np.ndarray:
    """Unnormalised sampling weight per prompt (the rule in the class docstring)."""
    p = self.pass_rate
    w = np.full(len(p), self.revisit_weight)
    w[np.isnan(p) | self.in_band()] = 1.0
    w[p >= 1.0] = 0.0
    return w

  def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
    """n prompt ids drawn in proportion to `weights()`."""
    if n < 1:
      raise ValueError(f"n={n!r} must be >= 1")
    w = self.weights()
    positive = int(np.count_nonzero(w))
    if positive == 0:
      raise RuntimeError("no prompt has positive weight: every prompt is retired (always solved)")
    idx = rng.choice(len(w), size=n, replace=positive < n, p=w / w.sum())
    return self.prompt_ids[idx]

  def needs_refresh(self, step: int) -> bool:
    if step < 0:
      raise ValueError(f"step={step!r} must be >= 0")
    return step % self.refresh_every == 0

  def summary(self) -> dict:
    """Fractions are over seen prompts; mean_pass_rate is NaN until a prompt has been seen."""
    p = self.pass_rate
    seen = ~np.isnan(p)
    n_seen = int(seen.sum())
    frac = lambda m: float(np.sum(m & seen)) / max(n_seen, 1)  # noqa: E731
    with np.errstate(invalid="ignore"):
      return {"prompts": len(p), "seen_fraction": n_seen / len(p), "in_band_fraction": frac(self.in_band()),
              "solved_fraction": frac(p >= 1.0), "unsolved_fraction": frac(p <= 0.0),
              "mean_pass_rate": float(np.mean(p[seen])) if n_seen else float("nan")}
