"""The `dpo` stage kind: direct preference optimisation on pairs built from verifiable problems.

Pairs (settings in `config.dpo`, problems in `config.tasks`), built once at the start of the stage with the model
entering it, which is also the frozen reference:
  * "on_policy": `dpo.samples` replies per problem at temperature 1 for `dpo.prompts` train problems; a problem with
    at least one reply the checker accepts and one it rejects gives a pair (the first of each), as in the RL stage's
    correct and incorrect samples.
  * "reference": the reference answer is chosen and the first rejected sampled reply is the rejected one, for every
    problem with a rejected reply.
Each pair is two rows (prompt in the chat template + reply); sequence log-probs are summed over the reply tokens
(its stop token included). The reference's log-probs are computed once. Loss: `dpo.py`'s sigmoid (with
`dpo.label_smoothing`, conservative DPO) or IPO, strength `dpo.beta`. Logged: loss, chosen / rejected rewards,
reward margin and accuracy, pairs built and the share of problems that gave one. Evaluations add held-out greedy
pass@1 and the preference accuracy on pairs built from held-out problems.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ConfigError, ModelConfig
from llama4_jax.sampling import Sampling
from llama4_jax.train import dpo, rollout, sft
from llama4_jax.train.step import TrainState, guarded_update

PAIR_SOURCES = ("on_policy", "reference")


def check_config(cfg) -> None:
  d = cfg.dpo
  if d.pair_source not in PAIR_SOURCES:
    raise ConfigError(f"dpo.pair_source={d.pair_source!r}; expected one of {PAIR_SOURCES}")
  if d.kind not in dpo.DPO_KINDS:
    raise ConfigError(f"dpo.kind={d.kind!r}; expected one of {dpo.DPO_KINDS}")
  if not d.beta > 0:
    raise ConfigError(f"dpo.beta must be > 0, got {d.beta}")
  if not 0.0 <= d.label_smoothing < 0.5 or (d.kind == "ipo" and d.label_smoothing):
    raise ConfigError(f"dpo.label_smoothing={d.label_smoothing} must lie in [0, 0.5) (and be 0 with kind 'ipo')")
  for key, low in (("prompts", 1), ("samples", 2), ("pairs_per_step", 1)):
    if d[key] < low:
      raise ConfigError(f"dpo.{key} must be >= {low}, got {d[key]}")


def build_pairs(model_cfg: ModelConfig, params, problems, tokenizer, *, samples: int, source: str,
                max_new_tokens: int, seed: int) -> tuple[rollout.Rollouts, dict]:
  """Pairs as a Rollouts of 2 rows per pair (chosen then rejected), rewards [N, 2] = [1, 0]; and counts."""
  ro = rollout.sample_groups(model_cfg, params, problems, samples, max_new_tokens=max_new_tokens,
                             sampling=Sampling(temperature=1.0, seed=seed), tokenizer=tokenizer)
  prompts, replies = [], []
  for p, problem in enumerate(problems):
    rows = range(p * samples, (p + 1) * samples)
    good = [b for b in rows if ro.rewards_PG[p, b - p * samples] > 0]
    bad = [b for b in rows if ro.rewards_PG[p, b - p * samples] == 0]
    if not bad or (source == "on_policy" and not good):
      continue
    if source == "on_policy":
      chosen = ro.completion_tokens[good[0]]
    else:
      chosen = tuple(tokenizer.encode(problem.answer)) + (tokenizer.eot_id,)
    prompts += [ro.prompt_tokens[bad[0]]] * 2
    replies += [chosen, ro.completion_tokens[bad[0]]]
  n = len(replies) // 2
  pairs = rollout.Rollouts(prompt_tokens=tuple(prompts), completion_tokens=tuple(replies),
                           rewards_PG=np.tile(np.asarray([[1.0, 0.0]], np.float32), (n, 1)),
                           completion_lengths_B=np.asarray([len(r) for r in replies], np.int32),
                           finished_B=np.ones(2 * n, bool))
  return pairs, {"dpo_pairs": n, "dpo_pair_fraction": n / max(len(problems), 1),
                 "dpo_sampled_pass_rate": float(ro.rewards_PG.mean())}


def sequence_logprobs(model_cfg: ModelConfig, params, batch) -> jax.Array:
  """float32 [B]: reply log-probs summed over the loss-mask tokens."""
  return jnp.sum(rollout.sequence_token_logprobs(model_cfg, params, batch), axis=-1)


def dpo_step(state: TrainState, batch, ref_logp_B, *, model_cfg: ModelConfig, tx, beta: float,
             label_smoothing: float, kind: str):
  """One update on rows [chosen_0, rejected_0, chosen_1, ...]; ref_logp_B the reference's sequence log-probs."""
  def objective(params):
    logp_B = sequence_logprobs(model_cfg, params, batch)
    return dpo.dpo_loss(logp_B[0::2], logp_B[1::2], ref_logp_B[0::2], ref_logp_B[1::2], beta, label_smoothing,
                        kind)

  (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  state, skipped = guarded_update(state, grads, loss, tx)
  return state, {**metrics, "loss": loss, "skipped": skipped,
                 "tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32))}


class DPODriver:
  """The DPO stage's data (pairs and the reference's log-probs) and update; state = the next pair index."""

  def __init__(self, cfg, model_cfg: ModelConfig, tokenizer, params, tx, seed: int):
    d, t = cfg.dpo, cfg.tasks
    self.cfg, self.model_cfg, self.tok, self.seed = cfg, model_cfg, tokenizer, seed
    train = sft.task_problems(t, "train")[:d.prompts]
    build = functools.partial(build_pairs, model_cfg, params, tokenizer=tokenizer, samples=d.samples,
                              source=d.pair_source, max_new_tokens=t.max_new_tokens)
    pairs, self.stats = build(train, seed=seed)
    if self.stats["dpo_pairs"] == 0:
      raise ConfigError(f"dpo: the entering model gave no {d.pair_source} pair on {len(train)} problems (pass rate "
                        f"{self.stats['dpo_sampled_pass_rate']:.3f}); train it first (sft) or use more dpo.prompts")
    self.held_out, _ = build(sft.task_problems(t, "held_out"), seed=seed + 1)
    self._logp = jax.jit(functools.partial(sequence_logprobs, model_cfg))
    self.rows = rollout.rollout_batch(pairs, cfg.data.seq_len)
    self.ref_logp = np.asarray(self._logp(params, self.rows))  # the frozen reference = the entering model
    self.held_rows = rollout.rollout_batch(self.held_out, cfg.data.seq_len) if self.held_out.prompt_tokens else None
    self.held_ref = None if self.held_rows is None else np.asarray(self._logp(params, self.held_rows))
    self._update = jax.jit(functools.partial(dpo_step, model_cfg=model_cfg, tx=tx, beta=d.beta,
                                             label_smoothing=d.label_smoothing, kind=d.kind), donate_argnums=0)
    self.next_pair = 0

  def update(self, state, step: int):
    del step
    n, k = self.stats["dpo_pairs"], self.cfg.dpo.pairs_per_step
    pairs = [(self.next_pair + i) % n for i in range(k)]  # cycles through the pairs in order
    self.next_pair = (self.next_pair + k) % n
    rows = np.asarray([r for p in pairs for r in (2 * p, 2 * p + 1)])
    batch = {key: v[rows] for key, v in self.rows.items()}
    state, metrics = self._update(state, batch, self.ref_logp[rows])
    return state, {**{key: float(v) for key, v in jax.device_get(metrics).items()}, **self.stats}

  def evaluate(self, params) -> dict[str, float]:
    c = self.cfg
    out = sft.greedy_pass_at_1(self.model_cfg, params, sft.task_problems(c.tasks, "held_out"),
                               sft.ChatFormat(self.tok), max_new_tokens=c.tasks.max_new_tokens,
                               batch_size=c.tasks.eval_problems)
    if self.held_rows is not None:
      logp = np.asarray(self._logp(params, self.held_rows))
      margin = (logp[0::2] - self.held_ref[0::2]) - (logp[1::2] - self.held_ref[1::2])
      out["dpo_preference_accuracy"] = float(np.mean(margin > 0))
      out["dpo_held_out_pairs"] = len(margin)
    return out

  def get_state(self) -> dict:
    return {"next_pair": self.next_pair}

  def set_state(self, state: dict) -> None:
    self.next_pair = int(state["next_pair"])
