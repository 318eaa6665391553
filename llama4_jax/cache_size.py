"""KV-cache memory for any preset and context length, chunked (RoPE) and global (NoPE) layers apart.

    python -m llama4_jax.cache_size --config=configs/base.py:scout --context=1000000,10000000 [--dtype=bfloat16]

A chunked layer caches one attention chunk whatever the context (generation uses a ring of `attention_chunk_size`
slots); a global layer caches every token. Both store keys and values of `num_key_value_heads x head_dim`.
"""

from __future__ import annotations

from llama4_jax.config import ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def cache_bytes(cfg: ModelConfig, context: int, dtype: str = "bfloat16", batch: int = 1) -> dict[str, float]:
  """Bytes of one row's cache (times `batch`) at `context` tokens, split by layer kind, and per token."""
  if dtype not in DTYPE_BYTES:
    raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPE_BYTES)}")
  if context < 1:
    raise ValueError(f"context must be positive, got {context}")
  per_slot = 2 * cfg.num_key_value_heads * cfg.head_dim * DTYPE_BYTES[dtype] * batch  # keys + values
  chunk = cfg.attention_chunk_size
  layers = range(cfg.num_hidden_layers)
  n_chunked = sum(cfg.is_rope_layer(i) and chunk is not None for i in layers)
  n_global = cfg.num_hidden_layers - n_chunked
  chunked = n_chunked * min(chunk or context, context) * per_slot
  global_ = n_global * context * per_slot
  return {"context": context, "chunked_layers": n_chunked, "global_layers": n_global,
          "chunked_bytes": chunked, "global_bytes": global_, "total_bytes": chunked + global_,
          "bytes_per_token": (chunked + global_) / context,
          "global_bytes_per_token": n_global * per_slot, "uncapped_bytes": cfg.num_hidden_layers * context * per_slot}


def _human(n: float) -> str:
  for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.0f} B"


def format_table(name: str, rows: list[dict]) -> str:
  head = ("| preset | context | chunked layers (ring of one chunk) | global layers (every token) | total | "
          "bytes / token | without the chunk cap |")
  lines = [head, "|---" * 7 + "|"]
  for r in rows:
    lines.append(f"| {name} | {r['context']:,} | {r['chunked_layers']} x ring = {_human(r['chunked_bytes'])} | "
                 f"{r['global_layers']} x {r['context']:,} = {_human(r['global_bytes'])} | "
                 f"**{_human(r['total_bytes'])}** | {r['bytes_per_token']:,.0f} "
                 f"(global layers: {r['global_bytes_per_token']:,}) | {_human(r['uncapped_bytes'])} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  from llama4_jax.config import model_config
  config = _CONFIG.value
  cfg = model_config(config)
  try:
    contexts = [int(c.replace("_", "")) for c in _CONTEXT.value.split(",") if c]
    rows = [cache_bytes(cfg, c, _DTYPE.value, _BATCH.value) for c in contexts]
  except ValueError as e:
    raise SystemExit(f"error: --context={_CONTEXT.value!r} / --dtype={_DTYPE.value!r}: {e}") from None
  print(f"KV cache of {config.get('preset', 'model')}, {_DTYPE.value}, batch {_BATCH.value}")
  print(format_table(config.get("preset", "model"), rows))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=True)
  _CONTEXT = flags.DEFINE_string("context", "1000000,10000000", "comma-separated context lengths in tokens")
  _DTYPE = flags.DEFINE_string("dtype", "bfloat16", "cache dtype: bfloat16, float16 or float32")
  _BATCH = flags.DEFINE_integer("batch", 1, "rows")
  flags.mark_flags_as_required(["config"])
  app.run(main)
