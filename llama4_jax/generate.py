"""Batched generation with a KV cache, and the `generate` command.

    python -m llama4_jax.generate --checkpoint=<training workdir or Hugging Face dir> --prompt="..." \
        [--image=a.png --image=b.png] [--chat] [--max_new_tokens=64] [--temperature=0.6 --top_p=0.9]

`generate(config, params, prompts, max_new_tokens=..., sampling=..., images=...)`: prompts (lists of token ids,
possibly of different lengths) are prefilled through the cache in chunk-aligned pieces (so a long prompt never
materialises a [L, L] attention), then decoded one token per row per step inside one compiled loop until every row
has produced a stop token or `max_new_tokens`. Chunked (RoPE) layers cache only the current chunk, global (NoPE)
layers the whole context (llama4_jax/ops/kv_cache.py). Each row keeps its own positions, so a prompt's result does
not depend on the other prompts in the batch. Images: each `<|image|>` placeholder of a prompt is expanded into its
tile layout and the tiles' features are fused in at the `<|patch|>` tokens before prefill.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ModelConfig, model_config
from llama4_jax.model import decode_block, embed_prompt, init_cache, unstack_cache, unstack_params
from llama4_jax.model.multipliers import fold_forward_multipliers
from llama4_jax.sampling import Sampling, sample

DEFAULT_PIECE = 512  # prefill piece without chunked attention
DECODE_MOE = "gathered"  # MoE path of one-token decode steps when the configured one is the CPU's "blocked"
STOP_NAMES = ("<|end_of_text|>", "<|eom|>", "<|eot|>")


class GenerationError(ValueError):
  """Bad generation input (prompt, images, stop tokens, lengths); the message names the offending value."""


def _model_config(config) -> ModelConfig:
  return config if isinstance(config, ModelConfig) else model_config(config)


def stop_ids(cfg: ModelConfig, sampling: Sampling, tokenizer=None) -> tuple[int, ...]:
  """Resolves `sampling.stop_tokens` (ids or special-token names) to ids; errors name an unknown entry."""
  wanted = sampling.stop_tokens
  if wanted is None:
    if tokenizer is not None:
      return tuple(tokenizer.token_to_id(n) for n in STOP_NAMES)
    return () if cfg.eos_token_id is None else (cfg.eos_token_id,)
  out = []
  for item in wanted:
    if isinstance(item, str):
      if tokenizer is None or item not in tokenizer.special_tokens:
        raise GenerationError(f"unknown stop token {item!r}" + ("" if tokenizer else " (no tokenizer to resolve "
                                                                                        "names; pass ids)"))
      item = tokenizer.special_tokens[item]
    if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < cfg.vocab_size:
      raise GenerationError(f"stop token {item!r} is not a token id in [0, {cfg.vocab_size})")
    out.append(int(item))
  return tuple(out)


class _Specials:
  """`<|...|>` ids from the model config alone: Llama 4 keeps them at fixed offsets from `<|patch|>` (id + 92)."""

  def __init__(self, patch_id: int):
    from llama4_jax.data.tokenizer import llama4_special_tokens
    first = patch_id - 92
    self.special_tokens = {name: first + k for k, name in enumerate(llama4_special_tokens(256))}

  def token_to_id(self, name):
    return self.special_tokens[name]


def prepare_images(cfg: ModelConfig, prompts, images, tokenizer):
  """Expands `<|image|>` placeholders; returns (prompts, per-row tiles [B, N, C, S, S] or None)."""
  from llama4_jax.data import image as image_lib
  if images is None:
    if cfg.vision is not None and any(cfg.vision.image_token_id in p for p in prompts):
      raise GenerationError(f"a prompt holds <|patch|> tokens (id {cfg.vision.image_token_id}) but no images were "
                            "given; pass images and write one <|image|> placeholder per image instead")
    return prompts, None
  if cfg.vision is None:
    raise GenerationError("images were given but the model has no vision tower (model.vision is disabled)")
  if len(images) != len(prompts):
    raise GenerationError(f"images must hold one list per prompt: {len(images)} lists for {len(prompts)} prompts")
  v, lookup = cfg.vision, tokenizer or _Specials(cfg.vision.image_token_id)
  out_prompts, row_tiles = [], []
  for i, (prompt, row_images) in enumerate(zip(prompts, images)):
    grids, tiles = [], []
    for j, img in enumerate(row_images or ()):
      source = img if isinstance(img, (str, os.PathLike)) else f"<prompt {i} image {j}>"
      pil = image_lib.load_image(img) if isinstance(img, (str, os.PathLike)) else img
      pixels, grid = image_lib.preprocess_image(pil, v.image_size, v.max_num_tiles, source=str(source))
      grids.append(grid)
      tiles.append(pixels)
    try:
      out_prompts.append(image_lib.expand_image_placeholders(prompt, grids, v.tokens_per_tile, lookup))
    except ValueError as e:
      raise GenerationError(f"prompt {i}: {e}") from e
    row_tiles.append(np.concatenate(tiles) if tiles else np.zeros((0, v.num_channels, v.image_size, v.image_size),
                                                                  np.float32))
  n = max(1, max(t.shape[0] for t in row_tiles))
  pixels = np.zeros((len(prompts), n, v.num_channels, v.image_size, v.image_size), np.float32)
  for b, t in enumerate(row_tiles):
    pixels[b, :t.shape[0]] = t
  return out_prompts, pixels


def check_prompts(cfg: ModelConfig, prompts, max_new_tokens: int) -> None:
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if len(prompts) == 0:
    raise GenerationError("no prompts given")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise GenerationError(f"prompt {i} is empty (it needs at least a <|begin_of_text|> token)")
    arr = np.asarray(p)
    if arr.min() < 0 or arr.max() >= cfg.vocab_size:
      raise GenerationError(f"prompt {i} holds token ids outside [0, {cfg.vocab_size})")
    if len(p) + max_new_tokens > cfg.max_position_embeddings:
      raise GenerationError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                            f"model's maximum context model.max_position_embeddings={cfg.max_position_embeddings}")


def piece_size(cfg: ModelConfig, prefill_piece: int | None) -> int:
  """Prefill piece length: the attention chunk by default; it must divide the chunk (pieces stay chunk-aligned)."""
  chunk = cfg.attention_chunk_size
  piece = prefill_piece or chunk or DEFAULT_PIECE
  if chunk is not None and chunk % piece:
    raise GenerationError(f"prefill_piece={piece} must divide model.attention_chunk_size={chunk}")
  return piece


@functools.lru_cache(maxsize=32)
def _compiled(cfg: ModelConfig, sampling: Sampling, stops: tuple[int, ...], pad: int):
  """Jitted prefill piece, embedding and decode functions for one (config, sampling) pair."""
  stops_arr = jnp.asarray(stops if stops else (-1,), jnp.int32)
  # One token per row per step: the CPU path's 128-row expert blocks would be nearly all padding, so decode steps
  # gather each token's expert weights instead (same math; prefill keeps the configured kernel).
  decode_cfg = cfg.replace(moe_impl=DECODE_MOE) if cfg.moe_impl == "blocked" else cfg

  def step(params, state):
    """Samples each row's next token from its last logits, records it, and feeds it through the cache."""
    key = jax.random.fold_in(state["key"], state["t"])
    token = sample(state["logits"], key, sampling)
    token = jnp.where(state["done"], pad, token)
    out = state["out"].at[:, state["t"]].set(token)
    done = state["done"] | jnp.isin(token, stops_arr)
    logits, cache = decode_block(decode_cfg, params, token[:, None], state["cache"], (~state["done"])[:, None],
                                 unstacked=True)
    return {"cache": cache, "logits": logits[:, 0], "out": out, "done": done, "t": state["t"] + 1,
            "key": state["key"]}

  def loop(params, state, limit):
    cond = lambda s: (s["t"] < limit) & ~jnp.all(s["done"])  # noqa: E731
    return jax.lax.while_loop(cond, functools.partial(step, params), state)

  def prefill(params, tokens, cache, valid, emb, last):
    """One chunk-aligned prompt piece; logits only at each row's slot `last` (its final prompt token if there)."""
    logits, cache = decode_block(cfg, params, tokens, cache, valid, emb, unstacked=True, logits_at_B=last)
    return logits[:, 0], cache

  return {"prefill": jax.jit(prefill, donate_argnums=2), "step": jax.jit(step, donate_argnums=1),
          "loop": jax.jit(loop, donate_argnums=1), "embed": jax.jit(functools.partial(embed_prompt, cfg)),
          "unstack_params": jax.jit(functools.partial(unstack_params, cfg)),
          "unstack_cache": jax.jit(functools.partial(unstack_cache, cfg))}


def _start(cfg, params, prompts, max_new_tokens, sampling, images, tokenizer, prefill_piece):
  """Validates, prefills, and returns (compiled fns, decode state, prompt lengths)."""
  cfg, params = fold_forward_multipliers(_model_config(cfg), params)  # once here, not in every decode step
  prompts = [list(map(int, p)) for p in prompts]
  prompts, pixels = prepare_images(cfg, prompts, images, tokenizer)
  check_prompts(cfg, prompts, max_new_tokens)
  stops = stop_ids(cfg, sampling, tokenizer)
  pad = cfg.pad_token_id if cfg.pad_token_id is not None and 0 <= cfg.pad_token_id < cfg.vocab_size else 0
  fns = _compiled(cfg, dataclasses.replace(sampling, seed=0), stops, pad)  # the seed is data, not compiled in
  piece = piece_size(cfg, prefill_piece)
  lengths = np.array([len(p) for p in prompts])
  padded = int(math.ceil(lengths.max() / piece) * piece)
  tokens = np.full((len(prompts), padded), pad, np.int32)
  for b, p in enumerate(prompts):
    tokens[b, :len(p)] = p
  valid = np.arange(padded)[None] < lengths[:, None]
  cache_len = int(math.ceil((lengths.max() + max_new_tokens) / piece) * piece)
  # Prefill and the decode loop read per-super-block weights and caches (see Transformer.unstacked): split once.
  cache = fns["unstack_cache"](init_cache(cfg, len(prompts), cache_len))
  emb = fns["embed"](params, jnp.asarray(tokens), jnp.asarray(pixels)) if pixels is not None else None
  params = fns["unstack_params"](params)
  last = None
  for s in range(0, padded, piece):
    here = (lengths - 1 >= s) & (lengths - 1 < s + piece)  # rows whose last prompt token is in this piece
    picked, cache = fns["prefill"](params, jnp.asarray(tokens[:, s:s + piece]), cache,
                                   jnp.asarray(valid[:, s:s + piece]), None if emb is None else emb[:, s:s + piece],
                                   jnp.asarray(np.clip(lengths - 1 - s, 0, piece - 1), jnp.int32))
    last = picked if last is None else jnp.where(jnp.asarray(here)[:, None], picked, last)
  state = {"cache": cache, "logits": last,
           "out": jnp.full((len(prompts), max_new_tokens), pad, jnp.int32),
           "done": jnp.zeros((len(prompts),), bool), "t": jnp.zeros((), jnp.int32),
           "key": jax.random.key(sampling.seed)}
  return fns, state, stops, params


def _trim(row: np.ndarray, stops) -> list[int]:
  hits = np.flatnonzero(np.isin(row, stops)) if stops else []
  return row[:hits[0] + 1].tolist() if len(hits) else row.tolist()


def generate(config, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: Sampling = Sampling(), images: Sequence[Sequence[Any]] | None = None, tokenizer=None,
             prefill_piece: int | None = None) -> list[list[int]]:
  """New tokens per prompt (ending with the stop token when one was produced).

  config: a ModelConfig or an experiment ConfigDict. prompts: token-id lists (different lengths allowed).
  images: optional, one list per prompt of image paths / PIL images / uint8 arrays, one per `<|image|>` in it.
  tokenizer: resolves stop-token names and gives the Llama 4 stop set (else the model's eos id).
  """
  fns, state, stops, params = _start(config, params, prompts, max_new_tokens, sampling, images, tokenizer,
                                     prefill_piece)
  state = fns["loop"](params, state, jnp.asarray(max_new_tokens, jnp.int32))
  out = np.asarray(state["out"])
  return [_trim(row, stops) for row in out]


def stream(config, params, prompt: Sequence[int], *, max_new_tokens: int, sampling: Sampling = Sampling(),
           images: Sequence[Any] | None = None, tokenizer=None) -> Iterator[int]:
  """Yields one prompt's new tokens as they are produced (the same step function as `generate`)."""
  fns, state, stops, params = _start(config, params, [prompt], max_new_tokens, sampling,
                                     None if images is None else [images], tokenizer, None)
  for _ in range(max_new_tokens):
    state = fns["step"](params, state)
    token = int(state["out"][0, int(state["t"]) - 1])
    yield token
    if token in stops:
      return


def load_checkpoint(path: str, stage: str | None = None):
  """(ModelConfig, params, tokenizer) from a training workdir (its last stage's newest checkpoint, or `stage`'s) or a
  Hugging Face directory (config.json + safetensors; `tokenizer.model` beside them, else the embedded tiny tokenizer
  when the vocabulary is its size)."""
  from llama4_jax.data.tokenizer import Tokenizer
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, "config.json")):
    from llama4_jax.convert.hf import load_hf
    cfg, params = load_hf(path)
    tok_file = os.path.join(path, "tokenizer.model")
    if os.path.isfile(tok_file):
      return cfg, params, Tokenizer(tok_file, num_reserved_special_tokens=cfg.vocab_size - _ranks(tok_file))
    tok = Tokenizer.default()
    if tok.vocab_size != cfg.vocab_size:
      raise GenerationError(f"{path}: no tokenizer.model, and the embedded tokenizer's {tok.vocab_size} tokens do "
                            f"not match the model's vocab_size={cfg.vocab_size}")
    return cfg, params, tok
  if os.path.isfile(os.path.join(path, "experiment.json")):
    return _load_workdir(path, stage)
  raise GenerationError(f"{path}: neither a training workdir (experiment.json) nor a Hugging Face checkpoint "
                        "directory (config.json)")


def _ranks(tok_file: str) -> int:
  with open(tok_file, "rb") as f:
    return sum(1 for line in f if line.strip())


def _load_workdir(path: str, stage: str | None = None):
  import json

  import orbax.checkpoint as ocp

  from llama4_jax.config import from_config_dict
  from llama4_jax.data.tokenizer import Tokenizer
  from llama4_jax.model import param_shapes
  with open(os.path.join(path, "experiment.json")) as f:
    stages = json.load(f)
  if stage is not None and stage not in stages:
    raise GenerationError(f"{path}: no stage {stage!r} in this workdir (stages: {', '.join(stages)})")
  for name in reversed(list(stages) if stage is None else [stage]):
    directory = os.path.join(path, "checkpoints", name)
    steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []
    if steps:
      break
  else:
    where = f"stage {stage!r}" if stage is not None else f"any stage ({', '.join(stages)})"
    raise GenerationError(f"{path}: no checkpoint found in {where}")
  entry = stages[name]
  cfg = from_config_dict(entry["model"])
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), param_shapes(cfg))
  step_dir = os.path.join(directory, str(steps[-1]), "state")
  restored = ocp.StandardCheckpointer().restore(step_dir)
  params = jax.tree_util.tree_map(lambda a, ref: jnp.asarray(a, ref.dtype), restored["params"], abstract)
  tok_path = entry.get("tokenizer") or ""
  tok = Tokenizer(tok_path, num_reserved_special_tokens=entry["reserved"]) if tok_path else Tokenizer.default()
  return cfg, params, tok


def main(argv):
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    _run_command(f)
  except (GenerationError, ValueError, OSError) as e:
    raise SystemExit(f"error: {e}") from None


def _run_command(f):
  from llama4_jax.data.tokenizer import ChatFormat
  cfg, params, tok = load_checkpoint(f.checkpoint)
  images = list(f.image or [])
  if f.chat:
    content = "<|image|>" * len(images) + f.prompt
    messages = [{"role": "user", "content": content}]
    prompt = ChatFormat(tok).encode_dialog_prompt(messages)
    # The placeholder text must become the <|image|> token, which ChatFormat (rightly) never does for user text.
    prompt = _placeholders_to_tokens(prompt, tok, len(images))
  else:
    prompt = tok.encode(f.prompt, bos=True, allowed_special={"<|image|>"})
    if images and prompt.count(tok.token_to_id("<|image|>")) == 0:
      prompt = [prompt[0]] + [tok.token_to_id("<|image|>")] * len(images) + prompt[1:]
  sampling = Sampling(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed,
                      stop_tokens=tuple(f.stop) if f.stop else None)
  tokens = stream(cfg, params, prompt, max_new_tokens=f.max_new_tokens, sampling=sampling, images=images or None,
                  tokenizer=tok)
  shown, ids = "", []
  for token in tokens:
    ids.append(token)
    text = tok.decode([t for t in ids if t < tok.num_base_tokens])  # special tokens (the stop) are not shown
    sys.stdout.write(text[len(shown):])
    sys.stdout.flush()
    shown = text
  sys.stdout.write("\n")


def _placeholders_to_tokens(prompt: list[int], tok, n: int) -> list[int]:
  text_ids = tok.encode("<|image|>")
  out, i = [], 0
  while i < len(prompt):
    if n and prompt[i:i + len(text_ids)] == text_ids:
      out.append(tok.token_to_id("<|image|>"))
      i += len(text_ids)
      n -= 1
    else:
      out.append(prompt[i])
      i += 1
  return out


def _define_flags():
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "training workdir or Hugging Face checkpoint directory")
  flags.DEFINE_string("prompt", None, "prompt text")
  flags.DEFINE_multi_string("image", None, "image file(s), one per <|image|> in the prompt (added if absent)")
  flags.DEFINE_bool("chat", False, "wrap the prompt as one user turn of the Llama 4 chat template")
  flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate at most")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy")
  flags.DEFINE_integer("top_k", 0, "0 = off")
  flags.DEFINE_float("top_p", 1.0, "1 = off")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_multi_string("stop", None, "stop token names (default: <|end_of_text|>, <|eom|>, <|eot|>)")
  flags.mark_flags_as_required(["checkpoint", "prompt"])


if __name__ == "__main__":
  from absl import app
  from llama4_jax.host_memory import retain_freed_host_memory
  retain_freed_host_memory()  # before the CPU backend starts
  _define_flags()
  app.run(main)
