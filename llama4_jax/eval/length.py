"""Length-generalization probes: loss by token position, passkey retrieval and multi-key needles (issue 11).

    python -m llama4_jax.eval.length --checkpoint=<training workdir or HF dir> --lengths=256,512,1024,2048,4096 \
        --out=<dir> [--rows=4] [--passkey_depths=0,0.25,0.5,0.75,1] [--passkey_trials=5] [--needle_keys=4] \
        [--set=model.attn_temperature_tuning=false --set=model.attention_chunk_size=512 ...]

* **Per-position loss.** Held-out text of the embedded corpus (the documents the training pipeline holds out), the
  documents joined into one stream (each begins with <|begin_of_text|>) and cut into `--rows` rows per length, so
  positions run on past the training length. Each row goes through the KV-cache decoder in chunk-aligned pieces
  (`piece_nll`), so only one piece's logits exist at a time and memory grows with the cache, not with L x vocab.
  Reported per length: mean loss and perplexity, and the loss averaged in position bins (`--bins` per length).
* **Passkey retrieval** (Mohtashami & Jaggi 2023): a 5-digit key stated once at a relative depth of a repeated
  filler, then asked for; the model's greedy continuation must start with the key. Accuracy per (length, depth).
* **Multi-key needles** (RULER's MK-NIAH): `--needle_keys` "the special magic number for <word> is <n>" lines spread
  through the filler, one of them asked for. Accuracy per length.
* Attention-time ablations without retraining: `--set=model.<field>=<value>` overrides the checkpoint's model config
  (temperature tuning on/off, `floor_scale`, `attn_scale`, `attention_chunk_size`, `rope_scaling.*`).

Writes `<out>/length.json` and the plots `ppl_vs_length.png`, `loss_by_position.png`, `passkey.png`.
Dynamic NTK scaling sees the length decoded so far in each piece, as it does during generation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ModelConfig, RopeScaling
from llama4_jax.data import passkey

FILLER = passkey.FILLER
PASSKEY_QUESTION = passkey.QUESTION
NEEDLE_WORDS = ("apple", "river", "candle", "mountain", "violin", "pepper", "garden", "window", "tiger", "marble",
                "rocket", "meadow", "lantern", "harbor", "pencil", "thunder")


# ---- per-position loss -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _piece_fns(cfg: ModelConfig) -> dict:
  """Jitted (per config, compiled once): one piece's per-token NLL through the cache, and the weight / cache
  unstacking the decoder reads."""
  from llama4_jax.model import decode_block, unstack_cache, unstack_params

  def piece(params, tokens_BT, targets_BT, cache):
    logits_BTV, cache = decode_block(cfg, params, tokens_BT, cache, unstacked=True)
    logits_BTV = logits_BTV.astype(jnp.float32)
    picked = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BTV, axis=-1) - picked, cache

  return {"piece": jax.jit(piece, donate_argnums=3),
          "unstack_params": jax.jit(functools.partial(unstack_params, cfg)),
          "unstack_cache": jax.jit(functools.partial(unstack_cache, cfg))}


def piece_nll(cfg: ModelConfig, params, tokens_BL, piece: int | None = None) -> np.ndarray:
  """Next-token negative log-likelihood at every position but the last, [B, L-1] float32, computed by feeding the
  rows through the KV cache in pieces of `piece` tokens (default: the attention chunk, or 512 without one)."""
  from llama4_jax.generate import piece_size
  from llama4_jax.model import init_cache
  from llama4_jax.model.multipliers import fold_forward_multipliers
  tokens_BL = np.asarray(tokens_BL, np.int32)
  if tokens_BL.ndim != 2 or tokens_BL.shape[1] < 2:
    raise ValueError(f"tokens must be [rows, length >= 2], got shape {tokens_BL.shape}")
  cfg, params = fold_forward_multipliers(cfg, params)
  piece = piece_size(cfg, piece)
  b, length = tokens_BL.shape
  padded = int(math.ceil(length / piece) * piece)
  tokens = np.zeros((b, padded + 1), np.int32)
  tokens[:, :length] = tokens_BL
  fns = _piece_fns(cfg)
  params = fns["unstack_params"](params)
  cache = fns["unstack_cache"](init_cache(cfg, b, padded))
  out = []
  for s in range(0, length, piece):
    e = min(s + piece, length)  # the last piece is not padded: dynamic NTK reads the length off its positions
    nll, cache = fns["piece"](params, jnp.asarray(tokens[:, s:e]), jnp.asarray(tokens[:, s + 1:e + 1]), cache)
    out.append(np.asarray(nll))
  return np.concatenate(out, axis=1)[:, :length - 1]


def binned(values_BL: np.ndarray, bins: int) -> list[dict]:
  """Mean of [B, L] values in `bins` equal position ranges: [{"start", "end", "mean"}] (end exclusive)."""
  length = values_BL.shape[1]
  edges = np.unique(np.linspace(0, length, bins + 1).round().astype(int))
  return [{"start": int(a), "end": int(b), "mean": float(values_BL[:, a:b].mean())}
          for a, b in zip(edges[:-1], edges[1:])]


def held_out_stream(tokenizer, need: int | None = None) -> np.ndarray:
  """The embedded corpus's held-out documents joined into one token stream (each document opens with
  <|begin_of_text|>): all of it, or its first `need` tokens. Raises if the held-out text is shorter than `need`."""
  from llama4_jax.data import tasks
  stream: list[int] = []
  for text in tasks.task_texts(tasks.EMBEDDED_TASK, "validation"):
    stream += tokenizer.encode(text, bos=True)
    if need is not None and len(stream) >= need:
      break
  if need is not None and len(stream) < need:
    raise ValueError(f"the held-out text has {len(stream)} tokens; {need} are needed")
  return np.asarray(stream if need is None else stream[:need], np.int32)


def held_out_rows(tokenizer, length: int, rows: int, offset: int = 0, stream: np.ndarray | None = None
                  ) -> np.ndarray:
  """`rows` rows of `length` tokens of the held-out stream; row r starts `offset + r * length` tokens into it.
  `stream`: a `held_out_stream` already read (else read here). Raises if the held-out text is too short."""
  need = offset + rows * length
  if stream is None:
    stream = held_out_stream(tokenizer, need)
  if len(stream) < need:
    raise ValueError(f"the held-out stream has {len(stream)} tokens; {rows} rows of {length} need {need}")
  return stream[offset:need].reshape(rows, length)


# ---- passkey and multi-key needles ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Probe:
  """One retrieval prompt: token ids, the answer text, and where the fact sits (token index of its start)."""

  tokens: tuple[int, ...]
  answer: str
  fact_at: int


def _fill(tokenizer, n: int) -> list[int]:
  unit = tokenizer.encode(FILLER)
  reps = n // len(unit) + 1
  return (unit * reps)[:n]


def _embed_facts(tokenizer, length: int, facts: Sequence[tuple[float, list[int]]], question: list[int]) -> tuple:
  """<|begin_of_text|> + filler of the right size with each fact's tokens inserted at its relative depth (0: right
  after the start, 1: right before the question) + question; exactly `length` tokens. Returns (tokens, fact starts)."""
  budget = length - 1 - len(question) - sum(len(f) for _, f in facts)
  if budget < 0:
    raise ValueError(f"length {length} is too short for the facts and the question "
                     f"({length - 1 - budget} tokens)")
  filler = _fill(tokenizer, budget)
  cuts = sorted((int(round(depth * budget)), i) for i, (depth, _) in enumerate(facts))
  tokens, starts, prev = [tokenizer.bos_id], [0] * len(facts), 0
  for cut, i in cuts:
    tokens += filler[prev:cut]
    starts[i] = len(tokens)
    tokens += facts[i][1]
    prev = cut
  tokens += filler[prev:] + question
  assert len(tokens) == length, (len(tokens), length)
  return tokens, starts


def passkey_probe(tokenizer, length: int, depth: float, rng: np.random.RandomState) -> Probe:
  """A `length`-token prompt hiding a random 5-digit pass key at relative `depth` (0..1)."""
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"passkey depth {depth} is not in [0, 1]")
  key = str(rng.randint(10000, 100000))
  tokens, (start,) = _embed_facts(tokenizer, length, [(depth, tokenizer.encode(passkey.fact(key)))],
                                  tokenizer.encode(PASSKEY_QUESTION))
  return Probe(tuple(tokens), key, start)


def needle_probe(tokenizer, length: int, keys: int, rng: np.random.RandomState) -> Probe:
  """RULER-style multi-key needle: `keys` (word, 6-digit number) facts spread evenly through the filler; the
  question asks for one of them at random."""
  if not 1 <= keys <= len(NEEDLE_WORDS):
    raise ValueError(f"needle keys={keys} must be in 1..{len(NEEDLE_WORDS)}")
  words = [NEEDLE_WORDS[i] for i in rng.choice(len(NEEDLE_WORDS), keys, replace=False)]
  numbers = [str(rng.randint(100000, 1000000)) for _ in words]
  facts = [((i + 0.5) / keys, tokenizer.encode(f" The special magic number for {w} is {n}. "))
           for i, (w, n) in enumerate(zip(words, numbers))]
  asked = int(rng.randint(keys))
  question = tokenizer.encode(f" What is the special magic number for {words[asked]}? The special magic number for "
                              f"{words[asked]} is")
  tokens, starts = _embed_facts(tokenizer, length, facts, question)
  return Probe(tuple(tokens), numbers[asked], starts[asked])


def retrieved(answer: str, generated: str) -> bool:
  """The greedy continuation states the answer first: its first run of digits equals the answer."""
  digits = ""
  for ch in generated.lstrip():
    if ch.isdigit():
      digits += ch
    elif digits or not ch.isspace():
      break
  return digits == answer


def run_probes(cfg, params, tokenizer, probes: Sequence[Probe], batch: int = 4) -> list[bool]:
  """Greedy-decodes each probe's answer with the KV-cache generator; True where it starts with the answer."""
  from llama4_jax.generate import generate
  from llama4_jax.sampling import Sampling
  hits = []
  for i in range(0, len(probes), batch):
    group = probes[i:i + batch]
    new = max(len(tokenizer.encode(" " + p.answer)) for p in group) + 2
    outs = generate(cfg, params, [list(p.tokens) for p in group], max_new_tokens=new,
                    sampling=Sampling(temperature=0.0, stop_tokens=()))
    hits += [retrieved(p.answer, tokenizer.decode(o)) for p, o in zip(group, outs)]
  return hits


# ---- the command -----------------------------------------------------------------------------------------------

def apply_overrides(cfg: ModelConfig, sets: Sequence[str]) -> ModelConfig:
  """`model.<field>=<value>` (or `model.rope_scaling.<field>=<value>`) strings applied to a ModelConfig; values
  parsed as JSON where they parse (numbers, true/false, null), else kept as strings. Unknown fields are named."""
  changes, rope = {}, {}
  for item in sets:
    key, sep, raw = item.partition("=")
    if not sep or not key.startswith("model."):
      raise ValueError(f"--set {item!r}: expected model.<field>=<value>")
    try:
      value = json.loads(raw)
    except json.JSONDecodeError:
      value = raw
    path = key[len("model."):].split(".")
    if len(path) == 2 and path[0] == "rope_scaling":
      if path[1] not in {f.name for f in dataclasses.fields(RopeScaling)}:
        raise ValueError(f"--set {item!r}: RopeScaling has no field {path[1]!r}")
      rope[path[1]] = value
    elif len(path) == 1 and path[0] in {f.name for f in dataclasses.fields(ModelConfig)} and path[0] != "vision":
      changes[path[0]] = value
    else:
      raise ValueError(f"--set {item!r}: ModelConfig has no field {'.'.join(path)!r}")
  if rope:
    base = cfg.rope_scaling or RopeScaling(rope_type="default")
    changes["rope_scaling"] = dataclasses.replace(base, **rope)
  return cfg.replace(**changes) if changes else cfg


def evaluate(cfg, params, tokenizer, lengths: Sequence[int], rows: int, bins: int, depths: Sequence[float],
             trials: int, needle_keys: int, needle_trials: int, seed: int = 0, progress=print) -> dict:
  """Every probe at every length; the JSON-ready result."""
  out = {"lengths": list(lengths), "loss": {}, "passkey": {}, "needle": {}}
  stream = held_out_stream(tokenizer)  # read once; every length cuts its rows from it
  if len(stream) < max(lengths):
    raise ValueError(f"the held-out text has {len(stream)} tokens, fewer than the length {max(lengths)}")
  for length in lengths:
    n = min(rows, len(stream) // length)  # as many rows as the held-out text holds, up to `rows`
    nll = piece_nll(cfg, params, held_out_rows(tokenizer, length, n, stream=stream))
    out["loss"][str(length)] = {"mean": float(nll.mean()), "ppl": float(np.exp(nll.mean())), "rows": n,
                                "bins": binned(nll, bins)}
    rng = np.random.RandomState(seed + length)
    if trials:
      grid = {}
      for depth in depths:
        hits = run_probes(cfg, params, tokenizer, [passkey_probe(tokenizer, length, depth, rng)
                                                   for _ in range(trials)])
        grid[str(depth)] = float(np.mean(hits))
      out["passkey"][str(length)] = grid
    if needle_trials:
      hits = run_probes(cfg, params, tokenizer, [needle_probe(tokenizer, length, needle_keys, rng)
                                                 for _ in range(needle_trials)])
      out["needle"][str(length)] = float(np.mean(hits))
    progress(f"length {length}: loss {out['loss'][str(length)]['mean']:.4f} "
             f"(ppl {out['loss'][str(length)]['ppl']:.2f})"
             + (f", passkey {np.mean(list(out['passkey'][str(length)].values())):.2f}" if trials else "")
             + (f", needle {out['needle'][str(length)]:.2f}" if needle_trials else ""))
  return out


def plot(result: dict, out_dir: str, train_length: int | None = None) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=90)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    paths.append(path)

  lengths = result["lengths"]
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.plot(lengths, [result["loss"][str(n)]["ppl"] for n in lengths], marker="o")
  if train_length:
    ax.axvline(train_length, color="gray", ls="--", lw=1, label=f"training length {train_length}")
    ax.legend(fontsize=8)
  ax.set(xscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity")
  save(fig, "ppl_vs_length.png")
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for n in lengths:
    bins = result["loss"][str(n)]["bins"]
    ax.plot([(b["start"] + b["end"]) / 2 for b in bins], [b["mean"] for b in bins], marker=".", label=str(n))
  if train_length:
    ax.axvline(train_length, color="gray", ls="--", lw=1)
  ax.set(xscale="log", xlabel="token position", ylabel="loss")
  ax.legend(fontsize=7, title="length")
  save(fig, "loss_by_position.png")
  if result["passkey"]:
    depths = list(next(iter(result["passkey"].values())))
    grid = np.array([[result["passkey"][str(n)][d] for n in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
    ax.set_yticks(range(len(depths)), depths)
    ax.set(xlabel="context length", ylabel="pass key depth")
    fig.colorbar(im, ax=ax, label="accuracy")
    save(fig, "passkey.png")
  return paths


def main(argv):
  del argv
  from absl import flags
  from llama4_jax.generate import load_checkpoint
  f = flags.FLAGS
  lengths = sorted({int(x) for x in f.lengths})
  depths = [float(x) for x in f.passkey_depths]
  bad = [d for d in depths if not 0 <= d <= 1]
  if bad or any(n < 64 for n in lengths):
    raise ValueError(f"--passkey_depths must be in [0, 1] (got {bad}) and --lengths at least 64 (got {lengths})")
  cfg, params, tokenizer = load_checkpoint(f.checkpoint, f.stage)
  cfg = apply_overrides(cfg, f.set or [])
  top = max(lengths) + 32
  if top > cfg.max_position_embeddings:
    cfg = cfg.replace(max_position_embeddings=top)  # the probe, not the model, bounds the context here
  os.makedirs(f.out, exist_ok=True)
  result = evaluate(cfg, params, tokenizer, lengths, f.rows, f.bins, depths, f.passkey_trials, f.needle_keys,
                    f.needle_trials, f.seed)
  result.update(checkpoint=os.path.abspath(f.checkpoint), overrides=list(f.set or []),
                model={k: v for k, v in dataclasses.asdict(cfg).items() if k != "vision"})
  path = os.path.join(f.out, "length.json")
  with open(path + ".tmp", "w") as fh:
    json.dump(result, fh, indent=1)
  os.replace(path + ".tmp", path)
  plots = plot(result, f.out, f.train_length or None)
  print(f"wrote {path} and {', '.join(os.path.basename(p) for p in plots)}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("checkpoint", None, "training workdir or Hugging Face directory")
  flags.DEFINE_string("stage", None, "workdir stage to load (default: the last)")
  flags.DEFINE_list("lengths", "256,512,1024,2048,4096", "evaluation lengths in tokens")
  flags.DEFINE_integer("rows", 4, "held-out rows per length for the loss, at most (fewer where the held-out "
                       "text is too short for them: the JSON records the number per length)")
  flags.DEFINE_integer("bins", 16, "position bins per length")
  flags.DEFINE_list("passkey_depths", "0,0.25,0.5,0.75,1", "relative depths of the pass key")
  flags.DEFINE_integer("passkey_trials", 5, "pass keys per (length, depth); 0 skips the probe")
  flags.DEFINE_integer("needle_keys", 4, "facts per multi-key needle prompt")
  flags.DEFINE_integer("needle_trials", 5, "needle prompts per length; 0 skips the probe")
  flags.DEFINE_integer("train_length", 0, "marked on the plots (0: not marked)")
  flags.DEFINE_integer("seed", 0, "probe randomness")
  flags.DEFINE_multi_string("set", None, "model.<field>=<value> override of the checkpoint's model config")
  flags.DEFINE_string("out", None, "output directory")
  flags.mark_flags_as_required(["checkpoint", "out"])
  app.run(main)
