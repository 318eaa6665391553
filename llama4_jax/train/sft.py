"""Supervised fine-tuning on a harder subset of verifiable problems (the `sft` stage kind).

A stage of kind "sft" (see train/loop.py) trains on chat examples built from `config.tasks` (llama4_jax/data/
verifiable.py problems of `tasks.families` x `tasks.levels`, train split):
  1. Each problem is a two-turn dialog in the Llama 4 chat template: the user turn is the prompt, the assistant turn
     the reference answer. The loss mask is 1 exactly on the assistant reply and its <|eot|>
     (`ChatFormat.chat_tokens_with_mask`): the model learns to answer and to stop, never to predict the prompt.
  2. Difficulty filter ("lightweight SFT on a harder subset"; Llama 4 dropped more than half of its SFT data as
     easy): the model entering the stage scores every candidate, and the easiest `sft.drop_easiest` fraction is
     dropped. `sft.filter_metric`: "loss" = mean cross entropy over the reply tokens (lowest = easiest), or
     "pass_rate" = fraction of `sft.pass_rate_samples` sampled replies (temperature 1) that `verifiable.check`
     accepts (highest = easiest). With `sft.filter_per_family` the fraction is dropped within each task family and
     level (a family the model finds easy as a whole is thinned, not removed). Ties drop the earlier candidate
     first. Kept and dropped counts are logged.
  3. Kept examples are packed whole into rows of `data.seq_len` tokens (an example is never split across rows), each
     its own segment: positions restart at 0 and attention never crosses examples (the model masks by segment id).
Image problems (verifiable.IMAGE_FAMILIES, on a model with a vision tower): the prompt's `<|image|>` placeholder is
expanded to the picture's token block exactly as the generator expands it (`rollout.expand_images`), and the row
carries the picture's tiles in `pixels` [data.tiles_per_row, C, S, S] (a row holds examples until its tokens or its
tile slots run out). When no candidate has a picture, rows have no `pixels` (text SFT as before).
Held out: the answer loss on `tasks.eval_problems` held-out problems (one per row) and their greedy pass@1, overall
and per family, by generating a reply with the KV-cache generator and checking it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ConfigError, ModelConfig
from llama4_jax.data import verifiable
from llama4_jax.data.tokenizer import ChatFormat
from llama4_jax.generate import generate
from llama4_jax.model import apply
from llama4_jax.sampling import Sampling
from llama4_jax.train import rollout

FILTER_METRICS = ("loss", "pass_rate")
_ROW_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


def check_config(cfg) -> None:
  """Raises ConfigError naming the key for task / SFT settings that cannot work (before anything is compiled)."""
  t, s = cfg.tasks, cfg.sft
  known = verifiable.FAMILIES + verifiable.IMAGE_FAMILIES
  for family in t.families:
    if family not in known:
      raise ConfigError(f"tasks.families: unknown family {family!r}; known: {', '.join(known)}")
    for level in t.levels:
      if level not in verifiable.LEVELS[family]:
        levels = verifiable.LEVELS[family]
        raise ConfigError(f"tasks.levels: level {level!r} is not available for family {family!r} "
                          f"({levels.start}..{levels.stop - 1})")
  for key in ("train_problems", "eval_problems", "max_new_tokens"):
    if t[key] < 1:
      raise ConfigError(f"tasks.{key} must be >= 1, got {t[key]}")
  if not 0.0 <= s.drop_easiest < 1.0:
    raise ConfigError(f"sft.drop_easiest must lie in [0, 1), got {s.drop_easiest}")
  if s.filter_metric not in FILTER_METRICS:
    raise ConfigError(f"sft.filter_metric={s.filter_metric!r}; expected one of {FILTER_METRICS}")
  if s.pass_rate_samples < 1 or s.score_batch_size < 1:
    raise ConfigError(f"sft.pass_rate_samples and sft.score_batch_size must be >= 1, got "
                      f"{s.pass_rate_samples} and {s.score_batch_size}")


def check_image_families(cfg, kind: str, model_cfg: ModelConfig) -> None:
  """Image task families (verifiable.IMAGE_FAMILIES) are for `sft` and `rl` stages of a model with a vision tower:
  DPO rows carry no pictures, so there the `<|image|>` prompt would be trained on as text."""
  images = [f for f in cfg.tasks.families if f in verifiable.IMAGE_FAMILIES]
  if not images:
    return
  if kind not in ("sft", "rl"):
    raise ConfigError(f"tasks.families holds image families {images}; a {kind!r} stage takes text families only "
                      f"(image tasks run in 'sft' and 'rl' stages)")
  if model_cfg.vision is None:
    raise ConfigError(f"tasks.families holds image families {images} but the model has no vision tower "
                      "(model.vision.enabled is False)")


def task_problems(tasks_cfg, split: str) -> list[verifiable.Problem]:
  n = tasks_cfg.train_problems if split == "train" else tasks_cfg.eval_problems
  return list(verifiable.problems(tuple(tasks_cfg.families), tuple(tasks_cfg.levels), n=n,
                                  seed=tasks_cfg.seed, split=split, unique=split != "train"))


def prompt_messages(problem: verifiable.Problem) -> list[dict]:
  return [{"role": "user", "content": problem.prompt}]


def encode_example(problem: verifiable.Problem, chat: ChatFormat,
                   model_cfg: ModelConfig | None = None) -> dict[str, np.ndarray]:
  """inputs / targets / loss_mask (int32 [n]) of the dialog; the mask is on targets that are reply tokens.

  An image problem (needs `model_cfg` with a vision tower) gets its prompt as the generator sees it (placeholder
  expanded to the picture's tokens) and "tiles": float32 [n_tiles, C, S, S]."""
  if not problem.images:
    ids, mask = chat.chat_tokens_with_mask(prompt_messages(problem) + [{"role": "assistant",
                                                                        "content": problem.answer}])
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}
  if model_cfg is None or model_cfg.vision is None:
    raise ConfigError(f"an {problem.family!r} problem carries a picture but the model has no vision tower")
  tok = chat.tokenizer
  prompt, tiles = rollout.expand_images(model_cfg, rollout.prompt_ids(problem, chat), problem.images, tok)
  reply = tok.encode(problem.answer) + [tok.eot_id]  # what chat_tokens_with_mask writes for an assistant turn
  ids = np.asarray(list(prompt) + reply, np.int32)
  mask = np.asarray([0] * len(prompt) + [1] * len(reply), np.int32)
  return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:], "tiles": tiles}


def _tiles(example: dict) -> int:
  return example["tiles"].shape[0] if "tiles" in example else 0


def check_fits(examples: Sequence[dict], seq_len: int, tiles_per_row: int | None = None) -> None:
  longest = max(len(e["inputs"]) for e in examples)
  if longest > seq_len:
    raise ConfigError(f"data.seq_len={seq_len} is shorter than the longest SFT example ({longest} tokens); raise "
                      "it or use lower tasks.levels")
  most = max(_tiles(e) for e in examples)
  if most and (tiles_per_row is None or most > tiles_per_row):
    raise ConfigError(f"data.tiles_per_row={tiles_per_row} is fewer than the {most} image tiles of an SFT example; "
                      "raise data.tiles_per_row")


def pack_row(examples: Sequence[dict], seq_len: int, tiles_per_row: int | None = None,
             tile_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
  """One row: the examples back to back, segment ids 1, 2, ..., positions from 0 in each, zeros after. With
  `tiles_per_row` (and `tile_shape` (C, S, S)) the row also holds `pixels`: the examples' tiles in order, then
  zero tiles."""
  row = {k: np.zeros(seq_len, np.int32) for k in _ROW_KEYS}
  if tiles_per_row is not None:
    row["pixels"] = np.zeros((tiles_per_row, *tile_shape), np.float32)
  at = tile = 0
  for seg, e in enumerate(examples, start=1):
    n = len(e["inputs"])
    for k in ("inputs", "targets", "loss_mask"):
      row[k][at:at + n] = e[k]
    row["positions"][at:at + n], row["segment_ids"][at:at + n] = np.arange(n), seg
    at += n
    if _tiles(e):
      row["pixels"][tile:tile + _tiles(e)] = e["tiles"]
      tile += _tiles(e)
  return row


def tile_layout(model_cfg: ModelConfig, examples: Sequence[dict], tiles_per_row: int):
  """(tiles_per_row, tile_shape) for rows of `examples`: (None, None) when none carries a picture."""
  if not any(_tiles(e) for e in examples):
    return None, None
  v = model_cfg.vision
  return tiles_per_row, (v.num_channels, v.image_size, v.image_size)


def stack_rows(rows: Sequence[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class PackedExamples:
  """Endless batches of packed rows over `examples`, reshuffled every epoch from `seed`; state = grain's. With
  `tiles_per_row`, rows carry `pixels` and close when the next example's tiles would not fit either."""

  def __init__(self, examples: Sequence[dict], seq_len: int, batch_size: int, seed: int, select=None,
               tiles_per_row: int | None = None, tile_shape: tuple[int, ...] | None = None):
    check_fits(examples, seq_len, tiles_per_row)
    self._examples, self._seq_len, self._batch_size = examples, seq_len, batch_size
    self._tiles = (tiles_per_row, tile_shape)
    self._select = select or (lambda batch: batch)  # e.g. this process's rows of the global batch
    self._it = iter(grain.MapDataset.range(len(examples)).shuffle(seed=seed).repeat(None).to_iter_dataset())
    self._pending = None  # (grain state before it, example index) that did not fit the previous row

  def _next(self) -> tuple[dict, int]:
    if self._pending is not None:
      pending, self._pending = self._pending, None
      return pending
    state = self._it.get_state()
    return state, int(next(self._it))

  def _row(self) -> dict:
    docs, used, tiles = [], 0, 0
    while True:
      state, i = self._next()
      n, t = len(self._examples[i]["inputs"]), _tiles(self._examples[i])
      if docs and (used + n > self._seq_len or (t and tiles + t > self._tiles[0])):
        self._pending = (state, i)
        return pack_row(docs, self._seq_len, *self._tiles)
      docs.append(self._examples[i])
      used, tiles = used + n, tiles + t

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return self._select(stack_rows([self._row() for _ in range(self._batch_size)]))

  def get_state(self) -> dict:
    return self._pending[0] if self._pending is not None else self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._pending = None
    self._it.set_state(state)


def one_per_row(examples: Sequence[dict], seq_len: int, batch_size: int, tiles_per_row: int | None = None,
                tile_shape: tuple[int, ...] | None = None) -> list[dict]:
  """Batches with one example per row (scoring, held-out loss); the last batch is padded with loss-free rows."""
  check_fits(examples, seq_len, tiles_per_row)
  rows = [pack_row([e], seq_len, tiles_per_row, tile_shape) for e in examples]
  rows += [pack_row([], seq_len, tiles_per_row, tile_shape)] * (-len(rows) % batch_size)
  return [stack_rows(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


@functools.partial(jax.jit, static_argnums=0)
def _reply_losses(model_cfg: ModelConfig, params, batch) -> jax.Array:
  """Mean cross entropy over each row's masked tokens, float32 [B] (rows without one: 0)."""
  logits_BLV, _ = apply(model_cfg, params, batch["inputs"], batch["positions"], batch["segment_ids"],
                        pixels_BNCHW=batch.get("pixels"))
  logits_BLV = logits_BLV.astype(jnp.float32)
  target_BL = jnp.take_along_axis(logits_BLV, batch["targets"][..., None], axis=-1)[..., 0]
  ce_BL = jax.nn.logsumexp(logits_BLV, axis=-1) - target_BL
  w_BL = batch["loss_mask"].astype(jnp.float32)
  return jnp.sum(ce_BL * w_BL, axis=-1) / jnp.maximum(jnp.sum(w_BL, axis=-1), 1.0)


def reply_losses(model_cfg: ModelConfig, params, examples: Sequence[dict], batch_size: int) -> np.ndarray:
  """Per-example mean reply loss under `params`, float64 [N]."""
  seq_len = -(-max(len(e["inputs"]) for e in examples) // 8) * 8
  most = max(_tiles(e) for e in examples)
  layout = tile_layout(model_cfg, examples, most)
  out = [np.asarray(_reply_losses(model_cfg, params, b))
         for b in one_per_row(examples, seq_len, batch_size, *layout)]
  return np.concatenate(out)[:len(examples)].astype(np.float64)


def completions(model_cfg: ModelConfig, params, problems: Sequence[verifiable.Problem], chat: ChatFormat, *,
                max_new_tokens: int, sampling: Sampling, batch_size: int) -> list[str]:
  """One reply per problem (generated after the open assistant header), decoded without its stop token."""
  tok = chat.tokenizer
  prompts = [rollout.prompt_ids(p, chat) for p in problems]
  images = [list(p.images) for p in problems] if any(p.images for p in problems) else None
  texts = []
  for i in range(0, len(prompts), batch_size):
    chunk = prompts[i:i + batch_size]
    s = dataclasses.replace(sampling, seed=sampling.seed + i)  # each chunk its own noise
    for ids in generate(model_cfg, params, chunk, max_new_tokens=max_new_tokens, sampling=s, tokenizer=tok,
                        images=None if images is None else images[i:i + batch_size]):
      texts.append(tok.decode([t for t in ids if t not in tok.stop_ids]))
  return texts


def pass_rates(model_cfg: ModelConfig, params, problems: Sequence[verifiable.Problem], chat: ChatFormat, *,
               samples: int, max_new_tokens: int, batch_size: int, seed: int = 0) -> np.ndarray:
  """Fraction of `samples` replies at temperature 1 that pass `verifiable.check`, per problem, float64 [N]."""
  passed = np.zeros(len(problems))
  for k in range(samples):
    texts = completions(model_cfg, params, problems, chat, max_new_tokens=max_new_tokens,
                        sampling=Sampling(temperature=1.0, seed=seed + 7919 * k), batch_size=batch_size)
    passed += [verifiable.check(p, t) for p, t in zip(problems, texts)]
  return passed / samples


def difficulty_filter(scores: np.ndarray, drop_fraction: float, easy_is_high: bool) -> tuple[np.ndarray, dict]:
  """Indices of the kept candidates (ascending) and counts: drops the floor(drop_fraction * N) easiest."""
  n = len(scores)
  n_drop = int(np.floor(drop_fraction * n))
  key = -np.asarray(scores) if easy_is_high else np.asarray(scores)
  order = np.argsort(key, kind="stable")  # easiest first; stable: ties drop the earlier candidate first
  kept = np.sort(order[n_drop:])
  return kept, {"sft_candidates": n, "sft_kept": n - n_drop, "sft_dropped": n_drop}


def grouped_difficulty_filter(scores: np.ndarray, groups: Sequence, drop_fraction: float,
                              easy_is_high: bool) -> tuple[np.ndarray, dict]:
  """`difficulty_filter` applied within each group (e.g. task family and level), so that a family the entering
  model finds easy as a whole is thinned like the others instead of dropped entirely."""
  scores, keys = np.asarray(scores), np.asarray([hash(g) for g in groups])
  kept, stats = [], {"sft_candidates": 0, "sft_kept": 0, "sft_dropped": 0}
  for key in dict.fromkeys(keys.tolist()):
    idx = np.flatnonzero(keys == key)
    k, st = difficulty_filter(scores[idx], drop_fraction, easy_is_high)
    kept.append(idx[k])
    stats = {name: stats[name] + st[name] for name in stats}
  return np.sort(np.concatenate(kept)), stats


def greedy_pass_at_1(model_cfg: ModelConfig, params, problems: Sequence[verifiable.Problem], chat: ChatFormat, *,
                     max_new_tokens: int, batch_size: int) -> dict[str, float]:
  """`pass_at_1` over all problems and `pass_at_1/<family>` per family (greedy replies)."""
  texts = completions(model_cfg, params, problems, chat, max_new_tokens=max_new_tokens, sampling=Sampling(),
                      batch_size=batch_size)
  ok = np.asarray([verifiable.check(p, t) for p, t in zip(problems, texts)])
  out = {"pass_at_1": float(ok.mean())}
  for family in sorted({p.family for p in problems}):
    out[f"pass_at_1/{family}"] = float(np.mean([o for o, p in zip(ok, problems) if p.family == family]))
  return out


class SFTData:
  """The SFT stage's data: the filtered training stream, held-out rows and the pass@1 evaluation."""

  def __init__(self, cfg, model_cfg: ModelConfig, params, tokenizer, seed: int, select=None):
    self.chat = ChatFormat(tokenizer)
    self.model_cfg, self.cfg = model_cfg, cfg
    candidates = task_problems(cfg.tasks, "train")
    examples = [encode_example(p, self.chat, model_cfg) for p in candidates]
    self.held_out = task_problems(cfg.tasks, "held_out")
    held_out = [encode_example(p, self.chat, model_cfg) for p in self.held_out]
    layout = tile_layout(model_cfg, examples + held_out, cfg.data.get("tiles_per_row", 0))
    check_fits(examples, cfg.data.seq_len, layout[0])
    s = cfg.sft
    if s.drop_easiest > 0 and s.filter_metric == "loss":
      scores = reply_losses(model_cfg, params, examples, s.score_batch_size)
    elif s.drop_easiest > 0:
      scores = pass_rates(model_cfg, params, candidates, self.chat, samples=s.pass_rate_samples,
                          max_new_tokens=cfg.tasks.max_new_tokens, batch_size=s.score_batch_size, seed=seed)
    else:
      scores = np.zeros(len(examples))
    groups = [(p.family, p.level) for p in candidates] if s.filter_per_family else [()] * len(candidates)
    kept, self.filter_stats = grouped_difficulty_filter(scores, groups, s.drop_easiest,
                                                        easy_is_high=s.filter_metric == "pass_rate")
    self.filter_stats["sft_mean_score_kept"] = float(np.mean(scores[kept]))
    self.filter_stats["sft_mean_score_all"] = float(np.mean(scores))
    self.train = PackedExamples([examples[i] for i in kept], cfg.data.seq_len, cfg.data.batch_size, seed, select,
                                *layout)
    self.eval_rows = one_per_row(held_out, cfg.data.seq_len, cfg.data.batch_size, *layout)

  def pass_at_1(self, params) -> dict[str, float]:
    return greedy_pass_at_1(self.model_cfg, params, self.held_out, self.chat,
                            max_new_tokens=self.cfg.tasks.max_new_tokens, batch_size=self.cfg.sft.score_batch_size)
