"""Online RL machinery: sample groups of rollouts, score them, lay them out as a batch, and update the policy.

One RL iteration, as the training loop wires it (every piece is a library function, tested on its own):

    rollouts = sample_groups(model_cfg, state.params, problems, G, max_new_tokens=..., sampling=..., tokenizer=tok)
    batch = rollout_batch(rollouts, seq_len)                        # rows b = p * G + g
    advantages_B = rl.group_advantages(rollouts.rewards_PG, kind).reshape(-1)
    logp_old_BL = sequence_token_logprobs(model_cfg, state.params, batch)       # the sampling policy
    logp_ref_BL = sequence_token_logprobs(model_cfg, ref_params, batch)         # only with a KL term
    state, metrics = rl_step(state, batch, advantages_B, logp_old_BL, logp_ref_BL, model_cfg=..., rl_cfg=..., tx=...)

Shape suffixes as in rl.py: P prompts, G samples per prompt (the group size), B = P * G rollouts, L the batch's
sequence length, V vocab.

Sampling seeds. `generate` draws each step's tokens with one key for the whole batch, but `jax.random.categorical`
over [B, V] logits draws independent Gumbel noise per row, so the G identical prompt rows of a group do get different
samples (tests/unit/train/test_rollout.py checks it). The key is `Sampling.seed` folded with the decode step only: a
caller that keeps one seed for every RL step reuses the same noise each step (samples stay correct for each step's
policy, but are correlated across steps), so give every step its own seed, e.g.
`dataclasses.replace(sampling, seed=step)`.

Temperature. Log-probs here are those of softmax(logits / rl_cfg.temperature), with no top-k / top-p filter. Sample
with the same temperature and top_k=0, top_p=1 so that logp_old is the distribution the tokens came from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llama4_jax.config import ModelConfig
from llama4_jax.data import verifiable, visual_tasks
from llama4_jax.data.tokenizer import ChatFormat, Tokenizer
from llama4_jax.generate import generate, prepare_images, stop_ids
from llama4_jax.model import apply
from llama4_jax.sampling import Sampling
from llama4_jax.train import rl
from llama4_jax.train.step import TrainState, balance_loss, guarded_update

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The policy-update settings `rl_step` needs, as a hashable value (a static jit argument).

  clip_low / clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's clip-higher: 0.2 / 0.28).
  kl_coef: weight of the k3 KL to the reference (0: no KL, as DAPO; > 0 needs logp_ref in `rl_step`).
  aggregation: "token_mean" (DAPO) or "seq_mean" (GRPO); see `rl.policy_loss`.
  temperature: the sampling temperature; log-probs are taken of softmax(logits / temperature) to match the sampler.
  load_balance_coef: MoE balancing loss weight, as `train.load_balance_coef` in pre-training (0: off).
  """

  clip_low: float = 0.2
  clip_high: float = 0.28
  kl_coef: float = 0.0
  aggregation: str = "token_mean"
  temperature: float = 1.0
  load_balance_coef: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.clip_low < 1.0:
      raise ValueError(f"rl.clip_low={self.clip_low!r} must lie in [0, 1)")
    if not self.clip_high >= 0.0:
      raise ValueError(f"rl.clip_high={self.clip_high!r} must be >= 0")
    if not self.kl_coef >= 0.0:
      raise ValueError(f"rl.kl_coef={self.kl_coef!r} must be >= 0")
    if self.aggregation not in rl.AGGREGATIONS:
      raise ValueError(f"rl.aggregation={self.aggregation!r} is not one of {rl.AGGREGATIONS}")
    if not self.temperature > 0.0:
      raise ValueError(f"rl.temperature={self.temperature!r} must be > 0 (log-probs of a greedy sampler are "
                       "undefined)")
    if not self.load_balance_coef >= 0.0:
      raise ValueError(f"rl.load_balance_coef={self.load_balance_coef!r} must be >= 0")

  @classmethod
  def from_config(cls, rl_cfg) -> "RLConfig":
    """From a stage's `rl` section (ConfigDict or mapping). Missing fields keep their defaults; other keys (group
    size, sampling, prompt selection, ...) belong to the loop and are ignored here."""
    get = rl_cfg.get if hasattr(rl_cfg, "get") else lambda k, d: getattr(rl_cfg, k, d)
    values = {f.name: get(f.name, f.default) for f in dataclasses.fields(cls)}
    return cls(**{k: v if k == "aggregation" else float(v) for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class Rollouts:
  """G sampled completions for each of P prompts, scored. Row b = p * G + g holds prompt p's g-th sample.

  prompt_tokens / completion_tokens: B token lists (a completion ends with its stop token when one was produced).
  rewards_PG: float32 [P, G]. completion_lengths_B: int32 [B]. finished_B: bool [B], True where the completion ended
  with a stop token (False: cut at max_new_tokens, e.g. for an overlong penalty).
  problems / completions: the P problems and B decoded completion texts (empty for token-level rollouts).
  """

  prompt_tokens: tuple[tuple[int, ...], ...]
  completion_tokens: tuple[tuple[int, ...], ...]
  rewards_PG: np.ndarray
  completion_lengths_B: np.ndarray
  finished_B: np.ndarray
  problems: tuple[verifiable.Problem, ...] = ()
  completions: tuple[str, ...] = ()
  # Image prompts only: each row's image tiles float32 [tiles, C, S, S] (the preprocessed pictures behind its
  # `<|patch|>` tokens, which prompt_tokens then hold expanded); None for text prompts.
  pixels_B: tuple[np.ndarray, ...] | None = None

  @property
  def group_size(self) -> int:
    return int(self.rewards_PG.shape[1])

  @property
  def num_prompts(self) -> int:
    return int(self.rewards_PG.shape[0])


def prompt_ids(problem: verifiable.Problem, chat: ChatFormat) -> list[int]:
  """The problem's prompt as one user turn of the Llama 4 chat template, ending in an open assistant header.

  An image problem's `<|image|>` placeholders become the `<|image|>` token (elsewhere special-token text in chat
  content stays plain text); `generate` and `expand_images` replace each by its picture's token block."""
  if not problem.images:
    return chat.encode_dialog_prompt([{"role": "user", "content": problem.prompt}])
  tok = chat.tokenizer
  content: list[int] = []
  for i, part in enumerate(problem.prompt.split(visual_tasks.IMAGE_PLACEHOLDER)):
    if i:
      content.append(tok.special_tokens[visual_tasks.IMAGE_PLACEHOLDER])
    if part:
      content += tok.encode(part)
  return ([tok.bos_id] + chat.encode_header("user") + content + [tok.eot_id] + chat.encode_header("assistant"))


def expand_images(model_cfg: ModelConfig, prompt: Sequence[int], images: Sequence, tokenizer: Tokenizer):
  """(prompt with each `<|image|>` expanded to its picture's tokens, float32 tiles [n, C, S, S]): what `generate`
  feeds the model for this prompt, laid out for a training row (llama4_jax.model.apply's pixels)."""
  expanded, pixels = prepare_images(model_cfg, [list(prompt)], [list(images)], tokenizer)
  tiles = int(sum(1 for t in expanded[0] if t == model_cfg.vision.image_token_id)) // model_cfg.vision.tokens_per_tile
  return tuple(expanded[0]), pixels[0, :tiles]


def completion_text(tokenizer: Tokenizer, completion: Sequence[int]) -> str:
  """Decoded completion without special tokens (the stop token, stray headers): the text a checker should read."""
  return tokenizer.decode([t for t in completion if t < tokenizer.num_base_tokens])


def sample_token_groups(model_cfg: ModelConfig, params, prompts_P: Sequence[Sequence[int]], group_size: int,
                        reward_fn: Callable[[int, list[int]], float], *, max_new_tokens: int, sampling: Sampling,
                        tokenizer: Tokenizer | None = None, images_P: Sequence[Sequence] | None = None) -> Rollouts:
  """Samples `group_size` completions per token prompt in one `generate` call; reward_fn(p, completion) scores each.

  The token-level core of `sample_groups`, for rewards that are not `verifiable.check` (e.g. synthetic bandits).
  images_P: per prompt, the pictures of its `<|image|>` tokens (a model with a vision tower; needs `tokenizer`);
  the rollouts then hold the expanded prompts and each row's tiles (`Rollouts.pixels_B`).
  """
  if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 2:
    raise ValueError(f"group_size={group_size!r} must be an integer >= 2: an advantage needs two samples per prompt")
  if len(prompts_P) == 0:
    raise ValueError("no prompts given")
  if sampling.temperature == 0.0:
    raise ValueError("sampling.temperature=0 is greedy: all group_size samples of a prompt would be identical")
  if images_P is not None and len(images_P) != len(prompts_P):
    raise ValueError(f"images_P holds {len(images_P)} entries for {len(prompts_P)} prompts")
  rows_B = [tuple(int(t) for t in p) for p in prompts_P for _ in range(group_size)]
  images_B = None if images_P is None else [list(i) for i in images_P for _ in range(group_size)]
  completions_B = generate(model_cfg, params, rows_B, max_new_tokens=max_new_tokens, sampling=sampling,
                           tokenizer=tokenizer, images=images_B)
  stops = set(stop_ids(model_cfg, sampling, tokenizer))
  rewards_B = [reward_fn(b // group_size, c) for b, c in enumerate(completions_B)]
  pixels_B = None
  if images_P is not None:  # the same expansion generate did, once per prompt, kept for the update's batch
    expanded = [expand_images(model_cfg, p, i, tokenizer) for p, i in zip(prompts_P, images_P)]
    rows_B = [expanded[b // group_size][0] for b in range(len(rows_B))]
    pixels_B = tuple(expanded[b // group_size][1] for b in range(len(rows_B)))
  return Rollouts(
      prompt_tokens=tuple(rows_B), completion_tokens=tuple(tuple(c) for c in completions_B),
      rewards_PG=np.asarray(rewards_B, np.float32).reshape(len(prompts_P), group_size),
      completion_lengths_B=np.asarray([len(c) for c in completions_B], np.int32),
      finished_B=np.asarray([bool(c) and c[-1] in stops for c in completions_B], bool), pixels_B=pixels_B)


def sample_groups(model_cfg: ModelConfig, params, problems: Sequence[verifiable.Problem], group_size: int, *,
                  max_new_tokens: int, sampling: Sampling, tokenizer: Tokenizer) -> Rollouts:
  """G chat-formatted samples per problem, scored 1.0 / 0.0 by `verifiable.check` on the decoded completion.
  Image problems are shown their pictures (text problems in the same call get none): the model needs a vision tower."""
  problems = tuple(problems)
  chat = ChatFormat(tokenizer)
  with_images = any(p.images for p in problems)
  if with_images and model_cfg.vision is None:
    family = next(p.family for p in problems if p.images)
    raise ValueError(f"image problems ({family}) need a model with a vision tower (model.vision)")
  score = lambda p, completion: verifiable.check(problems[p], completion_text(tokenizer, completion))  # noqa: E731
  rollouts = sample_token_groups(model_cfg, params, [prompt_ids(p, chat) for p in problems], group_size, score,
                                 max_new_tokens=max_new_tokens, sampling=sampling, tokenizer=tokenizer,
                                 images_P=[p.images for p in problems] if with_images else None)
  texts = tuple(completion_text(tokenizer, c) for c in rollouts.completion_tokens)
  return dataclasses.replace(rollouts, problems=problems, completions=texts)


def rollout_batch(rollouts: Rollouts, seq_len: int, pad_id: int = 0,
                  tiles_per_row: int | None = None) -> dict[str, np.ndarray]:
  """int32 [B, seq_len] arrays in train/step.py's batch format, one rollout per row (row b = p * G + g).

  Image rollouts add "pixels": float32 [B, tiles_per_row, C, S, S], each row's tiles then zero tiles
  (tiles_per_row defaults to the most any row has; fix it to keep one compiled shape across steps).

  With tokens = prompt + completion (n of them): inputs = tokens[:-1], targets = tokens[1:], positions 0..n-2,
  segment_ids 1 there and 0 on the padding after it, loss_mask 1 exactly where the target is a completion token
  (the response mask of `rl.policy_loss`). A row with n - 1 > seq_len raises ValueError naming both lengths rather
  than being truncated: a cut completion would be trained on with the reward of the whole one.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len!r} must be >= 1")
  b = len(rollouts.prompt_tokens)
  batch = {k: np.zeros((b, seq_len), np.int32) for k in BATCH_KEYS}
  batch["inputs"][:] = pad_id
  batch["targets"][:] = pad_id
  for i, (prompt, completion) in enumerate(zip(rollouts.prompt_tokens, rollouts.completion_tokens)):
    if not prompt:
      raise ValueError(f"rollout {i} has an empty prompt (it needs at least <|begin_of_text|>)")
    tokens = list(prompt) + list(completion)
    n = len(tokens) - 1
    if n > seq_len:
      raise ValueError(f"rollout {i}: prompt {len(prompt)} + completion {len(completion)} tokens need seq_len >= "
                       f"{n}, got seq_len={seq_len}")
    batch["inputs"][i, :n] = tokens[:-1]
    batch["targets"][i, :n] = tokens[1:]
    batch["positions"][i, :n] = np.arange(n)
    batch["segment_ids"][i, :n] = 1
    # targets[t] = tokens[t + 1] is a completion token from t = len(prompt) - 1 on.
    batch["loss_mask"][i, len(prompt) - 1:n] = 1
  if rollouts.pixels_B is not None:
    most = max(p.shape[0] for p in rollouts.pixels_B)
    n_tiles = most if tiles_per_row is None else tiles_per_row
    if most > n_tiles:
      raise ValueError(f"a rollout has {most} image tiles but tiles_per_row={n_tiles}")
    pixels = np.zeros((b, max(n_tiles, 1), *rollouts.pixels_B[0].shape[1:]), np.float32)
    for i, p in enumerate(rollouts.pixels_B):
      pixels[i, :p.shape[0]] = p
    batch["pixels"] = pixels
  return batch


def _policy_logits(model_cfg: ModelConfig, params, batch, temperature: float, parallel=None):
  logits_BLV, aux = apply(model_cfg, params, batch["inputs"], batch["positions"], batch["segment_ids"],
                          parallel=parallel, pixels_BNCHW=batch.get("pixels"))
  return logits_BLV / temperature, aux  # a plain division, so a traced temperature works too


def sequence_token_logprobs(model_cfg: ModelConfig, params, batch, temperature: float = 1.0,
                            parallel=None) -> jax.Array:
  """float32 [B, L]: log p(targets) under the policy `params`, 0 where loss_mask is 0 (prompt and padding).

  For logp_old (the params that sampled the batch) and logp_ref (the frozen reference). Jit with model_cfg (and
  parallel) bound, e.g. jax.jit(functools.partial(sequence_token_logprobs, model_cfg)).
  """
  logits_BLV, _ = _policy_logits(model_cfg, params, batch, temperature, parallel)
  mask_BL = batch["loss_mask"].astype(bool)
  return jnp.where(mask_BL, rl.token_logprobs(logits_BLV, batch["targets"]), 0.0)


def rl_step(state: TrainState, batch, advantages_B: jax.Array, logp_old_BL: jax.Array,
            logp_ref_BL: jax.Array | None = None, *, model_cfg: ModelConfig, rl_cfg: RLConfig,
            tx: optax.GradientTransformation, parallel=None) -> tuple[TrainState, dict[str, Any]]:
  """One policy-gradient update on a rollout batch (`rl.policy_loss` with rl_cfg's clip, KL and aggregation).

  advantages_B: one per row ([B], e.g. group_advantages(rewards_PG).reshape(-1)) or per token ([B, L]).
  logp_old_BL / logp_ref_BL: `sequence_token_logprobs` of the sampling policy / the reference (None without KL).
  A non-finite loss or gradient skips the update and is counted (see `guarded_update`). Metrics: loss,
  clip_fraction, ratio_mean, kl_old, approx_kl (only with logp_ref), entropy (mean over response tokens, nats),
  grad_norm, response_length (mean response tokens per row), tokens, balance_loss, skipped.
  Jit with model_cfg, rl_cfg, tx (and parallel) bound by functools.partial.
  """
  mask_BL = batch["loss_mask"]

  def objective(params):
    logits_BLV, aux = _policy_logits(model_cfg, params, batch, rl_cfg.temperature, parallel)
    logp_new_BL = rl.token_logprobs(logits_BLV, batch["targets"])
    loss, metrics = rl.policy_loss(logp_new_BL, logp_old_BL, advantages_B, mask_BL, rl_cfg.clip_low,
                                   rl_cfg.clip_high, rl_cfg.kl_coef, logp_ref_BL, rl_cfg.aggregation)
    bal = balance_loss(aux["moe"])
    metrics["balance_loss"] = bal
    # A logged statistic, not a loss term: no gradient flows through it.
    metrics["entropy"] = rl.entropy(jax.lax.stop_gradient(logits_BLV), mask_BL)
    return loss + rl_cfg.load_balance_coef * bal, (loss, metrics)

  (_, (loss, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  new_state, skipped = guarded_update(state, grads, loss, tx)
  metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), skipped=skipped,
                 response_length=jnp.mean(jnp.sum(mask_BL.astype(jnp.float32), axis=-1)))
  return new_state, metrics
