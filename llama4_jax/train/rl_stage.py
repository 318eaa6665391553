"""The `rl` stage kind: continuous online RL on verifiable problems with hard-prompt filtering.

Each update step (settings in `config.rl`, problems in `config.tasks`; the math is in rl.py and rollout.py):
  1. Prompts: `rl.prompts_per_step` drawn from a `PassRatePool` over the train problems, which prefers medium-to-hard
     prompts (pass rate in [rl.pool_low, rl.pool_high]) and retires always-solved ones. Every `rl.refresh_every`
     steps (step 0 included) the pass rates of `rl.refresh_prompts` random prompts are re-measured with the current
     policy, so the pool follows the improving model.
  2. Rollouts: `rl.group_size` samples per prompt at `rl.temperature` from the KV-cache generator, scored 1 / 0 by
     the exact checkers; every group's pass rate also updates the pool. Groups with all rewards equal (zero
     advantage) are dropped and new prompts drawn until the batch is full, for at most `rl.max_rounds` rounds; rows
     still missing then are masked out (`unfilled_groups`), and a step with no group left makes no update
     (`no_signal_step` = 1).
  3. Advantages (`rl.advantage`: grpo, rloo or dr_grpo) and one `rl_step`: PPO-clipped token loss with clip-higher
     (`rl.clip_low` / `rl.clip_high`), `rl.aggregation`, and a k3 KL to the frozen reference (the model entering
     the stage) when `rl.kl_coef` > 0.
Logged per step: reward_mean (kept groups), reward_mean_sampled (every sampled group), filtered_fraction, rounds,
entropy, clip_fraction, approx_kl (with a reference), response_length, pool_in_band_fraction, pool_mean_pass_rate,
generated_tokens_per_s and update_tokens_per_s. Evaluations add greedy pass@1 and pass@k (`rl.pass_k` samples at
`rl.temperature`) on the held-out problems, overall and per family.

Multimodal RL: with image families in `tasks.families` (a model with a vision tower), the generator sees each
prompt's picture and every update row carries its tiles, padded to `vision.max_num_tiles + 1` per image so that the
update compiles once.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ConfigError, ModelConfig
from llama4_jax.data import verifiable
from llama4_jax.sampling import Sampling
from llama4_jax.train import rl, rollout, sft

ADVANTAGES = rl.ADVANTAGE_KINDS


def check_config(cfg) -> None:
  """Raises ConfigError naming the key for RL settings that cannot work (before anything is compiled)."""
  r = cfg.rl
  if r.advantage not in ADVANTAGES:
    raise ConfigError(f"rl.advantage={r.advantage!r}; expected one of {ADVANTAGES}")
  for key, low in (("prompts_per_step", 1), ("group_size", 2), ("max_rounds", 1), ("refresh_every", 1),
                   ("refresh_prompts", 1), ("pass_k", 2)):
    if r[key] < low:
      raise ConfigError(f"rl.{key} must be >= {low}, got {r[key]}")
  if not 0.0 <= r.pool_low <= r.pool_high <= 1.0:
    raise ConfigError(f"rl.pool_low={r.pool_low} / rl.pool_high={r.pool_high} must satisfy 0 <= low <= high <= 1")
  try:
    rollout.RLConfig.from_config(r)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _prompt_length(problem, chat, model_cfg) -> int:
  ids = rollout.prompt_ids(problem, chat)
  if not problem.images:
    return len(ids)
  return len(rollout.expand_images(model_cfg, ids, problem.images, chat.tokenizer)[0])


def check_fits(cfg, chat, model_cfg: ModelConfig | None = None) -> None:
  """Every prompt (image prompts expanded to their tokens) plus `tasks.max_new_tokens` generated tokens must fit a
  row of `data.seq_len`."""
  for split in ("train", "held_out"):
    longest = max(_prompt_length(p, chat, model_cfg) for p in sft.task_problems(cfg.tasks, split))
    need = longest + cfg.tasks.max_new_tokens - 1
    if need > cfg.data.seq_len:
      raise ConfigError(f"data.seq_len={cfg.data.seq_len} cannot hold the longest {split} prompt ({longest} tokens) "
                        f"plus tasks.max_new_tokens={cfg.tasks.max_new_tokens}: it needs {need}")


def pass_at_k(model_cfg: ModelConfig, params, problems, tokenizer, *, k: int, temperature: float,
              max_new_tokens: int, seed: int = 0) -> dict[str, float]:
  """`pass_at_<k>`: fraction of problems with at least one of k sampled replies correct (overall and per family)."""
  ro = rollout.sample_groups(model_cfg, params, problems, k, max_new_tokens=max_new_tokens,
                             sampling=Sampling(temperature=temperature, seed=seed), tokenizer=tokenizer)
  solved = np.any(ro.rewards_PG > 0, axis=1)
  out = {f"pass_at_{k}": float(solved.mean())}
  for family in sorted({p.family for p in problems}):
    out[f"pass_at_{k}/{family}"] = float(np.mean([s for s, p in zip(solved, problems) if p.family == family]))
  return out


def _unique(problems) -> list[verifiable.Problem]:
  seen, out = set(), []
  for p in problems:
    if p.split_key not in seen:  # image problems share their prompt text: the key adds content and pixels
      seen.add(p.split_key)
      out.append(p)
  return out


def _group(ro: rollout.Rollouts, p: int) -> dict:
  rows = slice(p * ro.group_size, (p + 1) * ro.group_size)
  return {"prompt_tokens": ro.prompt_tokens[rows], "completion_tokens": ro.completion_tokens[rows],
          "lengths": ro.completion_lengths_B[rows], "finished": ro.finished_B[rows],
          "pixels": None if ro.pixels_B is None else ro.pixels_B[rows]}


def _as_rollouts(groups: list[dict], rewards_PG: np.ndarray) -> rollout.Rollouts:
  shown = [g["pixels"] for g in groups if g["pixels"] is not None]
  if shown:  # text groups of an image mix (sampled in a round that drew no image problem): rows with no tiles
    empty = np.zeros((0, *shown[0][0].shape[1:]), np.float32)
    groups = [g if g["pixels"] is not None else {**g, "pixels": (empty,) * len(g["prompt_tokens"])} for g in groups]
  return rollout.Rollouts(
      prompt_tokens=tuple(t for g in groups for t in g["prompt_tokens"]),
      completion_tokens=tuple(t for g in groups for t in g["completion_tokens"]),
      rewards_PG=np.asarray(rewards_PG, np.float32),
      completion_lengths_B=np.concatenate([g["lengths"] for g in groups]),
      finished_B=np.concatenate([g["finished"] for g in groups]),
      pixels_B=tuple(x for g in groups for x in g["pixels"]) if shown else None)


class RLDriver:
  """Runs the RL stage's update steps for train/loop.py; its state (the pass-rate pool) goes into checkpoints."""

  def __init__(self, cfg, model_cfg: ModelConfig, tokenizer, params, tx, seed: int):
    r = cfg.rl
    self.cfg, self.model_cfg, self.tok, self.seed = cfg, model_cfg, tokenizer, seed
    self.rl_cfg = rollout.RLConfig.from_config(r)
    self.problems = _unique(sft.task_problems(cfg.tasks, "train"))
    # Image tasks: every rollout row carries its tiles, padded to one fixed count (one compiled update shape). In a
    # text + image mix, text groups of a batch that holds image groups get zero tiles (`_as_rollouts`); a batch of
    # text groups only has no pixels (a second compiled shape).
    self.with_images = any(p.images for p in self.problems)
    self.tiles_per_row = (model_cfg.vision.max_num_tiles + 1) * max(len(p.images) for p in self.problems) \
        if self.with_images else None
    self.held_out = sft.task_problems(cfg.tasks, "held_out")
    self.pool = rl.PassRatePool(list(range(len(self.problems))), low=r.pool_low, high=r.pool_high,
                                decay=r.pool_decay, refresh_every=r.refresh_every)
    # The frozen reference: a copy, since the update step donates (and so invalidates) the policy's buffers.
    self.ref_params = jax.tree_util.tree_map(jnp.copy, params) if self.rl_cfg.kl_coef > 0 else None
    self._logp = jax.jit(functools.partial(rollout.sequence_token_logprobs, model_cfg,
                                           temperature=self.rl_cfg.temperature))
    self._update = jax.jit(functools.partial(rollout.rl_step, model_cfg=model_cfg, rl_cfg=self.rl_cfg, tx=tx),
                           donate_argnums=0)

  def _sample(self, params, ids, seed: int) -> rollout.Rollouts:
    r = self.cfg.rl
    return rollout.sample_groups(self.model_cfg, params, [self.problems[i] for i in ids], r.group_size,
                                 max_new_tokens=self.cfg.tasks.max_new_tokens,
                                 sampling=Sampling(temperature=r.temperature, seed=seed), tokenizer=self.tok)

  def _seed(self, *parts: int) -> int:
    return int(np.random.default_rng([self.seed, *parts]).integers(2**31 - 1))

  def refresh(self, params, step: int) -> None:
    n = min(self.cfg.rl.refresh_prompts, len(self.problems))
    ids = np.random.default_rng([self.seed, step, 1]).choice(len(self.problems), n, replace=False)
    ro = self._sample(params, ids, self._seed(step, 1))
    self.pool.update(ids.tolist(), ro.rewards_PG.mean(axis=1))

  def _collect(self, params, step: int):
    """Rounds of sampling into a GroupRefill until `prompts_per_step` groups with reward variance are kept."""
    r, rng = self.cfg.rl, np.random.default_rng([self.seed, step])
    acc, sampled, generated = rl.GroupRefill(r.prompts_per_step), [], 0
    for round_ in range(r.max_rounds):
      ids = self.pool.sample(r.prompts_per_step, rng)
      ro = self._sample(params, ids, self._seed(step, 2, round_))
      self.pool.update(ids.tolist(), ro.rewards_PG.mean(axis=1))
      sampled.append(ro.rewards_PG)
      generated += int(ro.completion_lengths_B.sum())
      if acc.add(ro.rewards_PG, [_group(ro, p) for p in range(ro.num_prompts)]):
        break
    stats = {"rounds": acc.rounds, "filtered_fraction": acc.filtered / max(acc.seen, 1),
             "reward_mean_sampled": float(np.mean(np.concatenate(sampled))), "generated_tokens": generated}
    groups, rewards = acc.take()
    return groups, rewards, ro, stats

  def update(self, state, step: int):
    """One RL step: (state, metrics). Host-side sampling, then the jitted update."""
    r = self.cfg.rl
    t0 = time.perf_counter()
    if self.pool.needs_refresh(step):
      self.refresh(state.params, step)
    groups, rewards, last, stats = self._collect(state.params, step)
    t_generate = time.perf_counter() - t0
    missing = r.prompts_per_step - len(groups)
    metrics = {**stats, "unfilled_groups": missing, **{f"pool_{k}": v for k, v in self.pool.summary().items()
                                                       if k in ("in_band_fraction", "mean_pass_rate")}}
    metrics["generated_tokens_per_s"] = stats["generated_tokens"] / max(t_generate, 1e-9)
    if not groups:  # every group had equal rewards in every round: nothing to learn from this step
      return state, {**metrics, "loss": 0.0, "tokens": 0.0, "no_signal_step": 1}
    filler = [_group(last, 0)] * missing  # masked out below: shapes stay fixed, no gradient from them
    rewards_PG = np.concatenate([rewards, np.zeros((missing, r.group_size), np.float32)])
    batch = rollout.rollout_batch(_as_rollouts(groups + filler, rewards_PG), self.cfg.data.seq_len,
                                  tiles_per_row=self.tiles_per_row)
    batch["loss_mask"][len(groups) * r.group_size:] = 0
    advantages_B = rl.group_advantages(jnp.asarray(rewards_PG), r.advantage).reshape(-1)
    logp_old = self._logp(state.params, batch)
    logp_ref = None if self.ref_params is None else self._logp(self.ref_params, batch)
    t1 = time.perf_counter()
    state, out = self._update(state, batch, advantages_B, logp_old, logp_ref)
    out = jax.device_get(out)
    metrics.update({k: float(v) for k, v in out.items()}, reward_mean=float(np.mean(rewards)), no_signal_step=0)
    metrics["update_tokens_per_s"] = float(np.sum(batch["segment_ids"] > 0)) / max(time.perf_counter() - t1, 1e-9)
    return state, metrics

  def evaluate(self, params) -> dict[str, float]:
    c = self.cfg
    out = sft.greedy_pass_at_1(self.model_cfg, params, self.held_out, sft.ChatFormat(self.tok),
                               max_new_tokens=c.tasks.max_new_tokens, batch_size=len(self.held_out))
    out.update(pass_at_k(self.model_cfg, params, self.held_out, self.tok, k=c.rl.pass_k,
                         temperature=c.rl.temperature, max_new_tokens=c.tasks.max_new_tokens, seed=self.seed))
    return out

  def get_state(self) -> dict:
    rates = [None if np.isnan(x) else float(x) for x in self.pool.pass_rate]
    return {"pass_rate": rates, "observations": self.pool.observations.tolist()}

  def set_state(self, state: dict) -> None:
    self.pool.pass_rate = np.asarray([np.nan if x is None else x for x in state["pass_rate"]], np.float64)
    self.pool.observations = np.asarray(state["observations"], np.int64)
