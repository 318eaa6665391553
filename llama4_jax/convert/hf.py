"""`load_hf` / `save_hf`: Hugging Face Llama4ForCausalLM and Llama4ForConditionalGeneration (text + vision tower)
safetensors directories <-> (ModelConfig, params).

Layouts: HF linear weights are [out, in]; ours are input-major and split per head ([D, H, K] for q). HF's fused
expert tensors are already input-major: `gate_up_proj` [E, D, 2F] (gate first) and `down_proj` [E, F, D]; our
SwiGLU weights keep gate and up together as [..., D, 2, F]. Our
scanned layers are stacked: global layer i lives at blocks/layer_{i % block_size}[i // block_size].
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable

import jax
import ml_dtypes
import numpy as np

from llama4_jax.config import ModelConfig
from llama4_jax.convert import safetensors_io as st
from llama4_jax.convert.hf_config import config_from_hf, config_to_hf
from llama4_jax.convert.safetensors_io import CheckpointError
from llama4_jax.model.multipliers import fold_forward_multipliers

# One entry per HF tensor: (HF suffix, our path inside a layer, slot, HF -> ours, ours -> HF). `slot` selects the
# gate (0) or up (1) half of our fused [D, 2, F] SwiGLU weight; None means the whole leaf.
Transform = Callable[[np.ndarray, ModelConfig], np.ndarray]


def _heads_in(n_heads: str) -> Transform:
  return lambda w, c: w.T.reshape(c.hidden_size, getattr(c, n_heads), c.head_dim)


def _heads_out(w, c):
  return w.reshape(c.hidden_size, -1).T


_T = lambda w, c: w.T  # noqa: E731
_ID = lambda w, c: w  # noqa: E731


def _swiglu_entries(hf_prefix: str, ours: tuple[str, ...]):
  return [(f"{hf_prefix}.gate_proj.weight", ours + ("gate_up",), 0, _T, _T),
          (f"{hf_prefix}.up_proj.weight", ours + ("gate_up",), 1, _T, _T),
          (f"{hf_prefix}.down_proj.weight", ours + ("down",), None, _T, _T)]


_ATTN = [
    ("self_attn.q_proj.weight", ("attn", "q"), None, _heads_in("num_attention_heads"), _heads_out),
    ("self_attn.k_proj.weight", ("attn", "k"), None, _heads_in("num_key_value_heads"), _heads_out),
    ("self_attn.v_proj.weight", ("attn", "v"), None, _heads_in("num_key_value_heads"), _heads_out),
    ("self_attn.o_proj.weight", ("attn", "o"), None,
     lambda w, c: w.T.reshape(c.num_attention_heads, c.head_dim, c.hidden_size),
     lambda w, c: w.reshape(-1, c.hidden_size).T),
    ("input_layernorm.weight", ("attn_norm", "scale"), None, _ID, _ID),
    ("post_attention_layernorm.weight", ("ffn_norm", "scale"), None, _ID, _ID),
]
_DENSE = _swiglu_entries("feed_forward", ("mlp",))
_MOE = [
    ("feed_forward.router.weight", ("moe", "router"), None, _T, _T),
    # HF's fused experts are input-major [E, D, 2F] with the gate in the first F columns: a reshape away from ours.
    ("feed_forward.experts.gate_up_proj", ("moe", "gate_up"), None,
     lambda w, c: w.reshape(c.num_local_experts, c.hidden_size, 2, c.intermediate_size),
     lambda w, c: w.reshape(c.num_local_experts, c.hidden_size, 2 * c.intermediate_size)),
    ("feed_forward.experts.down_proj", ("moe", "down"), None, _ID, _ID),
] + _swiglu_entries("feed_forward.shared_expert", ("moe", "shared"))


def _layer_entries(cfg: ModelConfig, j: int):
  return _ATTN + (_MOE if cfg.is_moe_layer(j) else _DENSE)


def _vision_heads_in(w, c):  # [H*K, D] -> [D, H, K]
  v = c.vision
  return w.T.reshape(v.hidden_size, v.num_attention_heads, -1)


def _vision_bias_in(w, c):  # [H*K] -> [H, K]
  return w.reshape(c.vision.num_attention_heads, -1)


_FLAT = lambda w, c: w.reshape(w.shape[0], -1).T if w.ndim == 3 else w.reshape(-1)  # noqa: E731


def _vision_attn(name):
  return [(f"self_attn.{name}_proj.weight", (name,), _vision_heads_in, _FLAT),
          (f"self_attn.{name}_proj.bias", (f"{name}_bias",), _vision_bias_in, _FLAT)]


# Vision tower, per encoder layer j: (HF suffix after `vision_model.model.layers.{j}.`, our path under
# params['vision']['layers'], HF -> ours, ours -> HF).
_VISION_LAYER = _vision_attn("q") + _vision_attn("k") + _vision_attn("v") + [
    ("self_attn.o_proj.weight", ("o",), lambda w, c: w.T.reshape(c.vision.num_attention_heads, -1, w.shape[0]),
     lambda w, c: w.reshape(-1, w.shape[-1]).T),
    ("self_attn.o_proj.bias", ("o_bias",), _ID, _ID),
    ("mlp.fc1.weight", ("fc1",), _T, _T), ("mlp.fc1.bias", ("fc1_bias",), _ID, _ID),
    ("mlp.fc2.weight", ("fc2",), _T, _T), ("mlp.fc2.bias", ("fc2_bias",), _ID, _ID),
    ("input_layernorm.weight", ("attn_norm", "scale"), _ID, _ID),
    ("input_layernorm.bias", ("attn_norm", "bias"), _ID, _ID),
    ("post_attention_layernorm.weight", ("mlp_norm", "scale"), _ID, _ID),
    ("post_attention_layernorm.bias", ("mlp_norm", "bias"), _ID, _ID),
]
# Everything else of the vision tower and the projector: (HF key, our path under params['vision'], to ours, to HF).
_VISION_TOP = [
    ("vision_model.patch_embedding.linear.weight", ("patch_embed",), _T, _T),
    ("vision_model.class_embedding", ("class_embedding",), _ID, _ID),
    ("vision_model.positional_embedding_vlm", ("position_embedding",), _ID, _ID),
    ("vision_model.layernorm_pre.weight", ("pre_norm", "scale"), _ID, _ID),
    ("vision_model.layernorm_pre.bias", ("pre_norm", "bias"), _ID, _ID),
    ("vision_model.layernorm_post.weight", ("post_norm", "scale"), _ID, _ID),
    ("vision_model.layernorm_post.bias", ("post_norm", "bias"), _ID, _ID),
    ("vision_model.vision_adapter.mlp.fc1.weight", ("adapter_fc1",), _T, _T),
    ("vision_model.vision_adapter.mlp.fc2.weight", ("adapter_fc2",), _T, _T),
    ("multi_modal_projector.linear_1.weight", ("projector",), _T, _T),
]


def _vision_entries(cfg: ModelConfig):
  """(HF key, our leaf, layer index or None, to ours, to HF) for every vision tensor."""
  if cfg.vision is None:
    return []
  out = [(key, ("vision",) + ours, None, to_ours, to_hf) for key, ours, to_ours, to_hf in _VISION_TOP]
  for j in range(cfg.vision.num_hidden_layers):
    out += [(f"vision_model.model.layers.{j}.{suffix}", ("vision", "layers") + ours, j, to_ours, to_hf)
            for suffix, ours, to_ours, to_hf in _VISION_LAYER]
  return out


def _text_prefix(cfg: ModelConfig) -> str:
  """Llama4ForConditionalGeneration nests the text model under `language_model.`."""
  return "language_model." if cfg.vision is not None else ""


def _expected_keys(cfg: ModelConfig) -> set[str]:
  t = _text_prefix(cfg)
  keys = {f"{t}model.embed_tokens.weight", f"{t}model.norm.weight", f"{t}lm_head.weight"}
  for i in range(cfg.num_hidden_layers):
    keys |= {f"{t}model.layers.{i}.{suffix}" for suffix, *_ in _layer_entries(cfg, i % cfg.block_size)}
  return keys | {key for key, *_ in _vision_entries(cfg)}


def _slot(leaf, slot):
  """The part of one layer's leaf an HF tensor maps to (a view, so writes land in the leaf)."""
  return leaf if slot is None else leaf[..., slot, :]


class _TensorIndex:
  """Key -> (file, lazily memory-mapped array) over a single or sharded safetensors checkpoint."""

  def __init__(self, path: str):
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{index}: unreadable index ({e})") from e
      self.files = {k: os.path.join(path, v) for k, v in weight_map.items()}
      self.source = index
    elif os.path.exists(single):
      self.source = single
      self.files = {k: single for k in st.read_header(single)[0]}
    else:
      raise CheckpointError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
    for file in set(self.files.values()):
      if not os.path.exists(file):
        raise CheckpointError(f"{file}: listed in the index but missing")
    self._open: dict[str, dict[str, np.ndarray]] = {}

  def get(self, key: str) -> np.ndarray:
    file = self.files[key]
    if file not in self._open:
      self._open[file] = st.load_file(file)
    tensors = self._open[file]
    if key not in tensors:
      raise CheckpointError(f"{file}: tensor '{key}' listed in the index is not in the file")
    return tensors[key]


def _check_shape(arr, shape, key, file):
  if tuple(arr.shape) != tuple(shape):
    raise CheckpointError(f"{file}: tensor '{key}' has shape {tuple(arr.shape)}, expected {tuple(shape)}")


def load_hf(path: str, param_dtype: str = "float32", **config_overrides) -> tuple[ModelConfig, dict]:
  """Reads a local HF Llama 4 checkpoint directory (text-only or with the vision tower) -> (ModelConfig, params
  pytree of numpy arrays). `config_overrides` replace ModelConfig fields (e.g. kernels: moe_impl='blocked')."""
  from llama4_jax.model import param_shapes

  cfg_path = os.path.join(path, "config.json")
  try:
    with open(cfg_path) as f:
      hf_cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{cfg_path}: cannot read config ({e})") from e
  cfg = config_from_hf(hf_cfg, param_dtype=param_dtype, **config_overrides)
  index = _TensorIndex(path)
  expected = _expected_keys(cfg)
  t = _text_prefix(cfg)
  text_cfg = hf_cfg.get("text_config", hf_cfg) if t else hf_cfg
  tied = bool(text_cfg.get("tie_word_embeddings", hf_cfg.get("tie_word_embeddings"))) and \
      f"{t}lm_head.weight" not in index.files
  missing = sorted(expected - set(index.files) - ({f"{t}lm_head.weight"} if tied else set()))
  if missing:
    where = index.source
    raise CheckpointError(f"{where}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  extra = sorted(set(index.files) - expected)
  if extra:
    raise CheckpointError(f"{index.files[extra[0]]}: unexpected tensor(s) {extra[:5]} for this config")

  shapes = param_shapes(cfg)
  dtype = np.dtype(ml_dtypes.bfloat16) if param_dtype == "bfloat16" else np.dtype(param_dtype)
  params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, dtype), shapes)

  def put(target, value, key):
    _check_shape(value, target.shape, key, index.files.get(key, path))
    target[...] = value.astype(dtype)

  put(params["embed"], index.get(f"{t}model.embed_tokens.weight"), f"{t}model.embed_tokens.weight")
  put(params["final_norm"]["scale"], index.get(f"{t}model.norm.weight"), f"{t}model.norm.weight")
  head_key = f"{t}lm_head.weight"
  head = index.get(f"{t}model.embed_tokens.weight" if tied else head_key)
  _check_shape(head, (cfg.vocab_size, cfg.hidden_size), head_key, index.files.get(head_key, path))
  put(params["lm_head"], head.T, head_key)
  for i in range(cfg.num_hidden_layers):
    b, j = divmod(i, cfg.block_size)
    layer = params["blocks"][f"layer_{j}"]
    for suffix, ours, slot, to_ours, to_hf in _layer_entries(cfg, j):
      key = f"{t}model.layers.{i}.{suffix}"
      target = _slot(_leaf(layer, ours)[b], slot)
      raw = index.get(key)
      _check_shape(raw, _hf_shape(to_hf, target.shape, cfg), key, index.files[key])
      put(target, to_ours(raw, cfg), key)
  for key, ours, j, to_ours, to_hf in _vision_entries(cfg):
    target = _leaf(params, ours) if j is None else _leaf(params, ours)[j]
    raw = index.get(key)
    _check_shape(raw, _hf_shape(to_hf, target.shape, cfg), key, index.files[key])
    put(target, to_ours(raw, cfg), key)
  return cfg, params


def _hf_shape(to_hf, our_shape, cfg) -> tuple[int, ...]:
  """HF shape of a tensor whose layout here is `our_shape`, via a zero-stride view (nothing allocated)."""
  probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), our_shape, (0,) * len(our_shape))
  return tuple(to_hf(probe, cfg).shape)


def _leaf(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def hf_state_dict(cfg: ModelConfig, params, dtype=np.float32) -> dict[str, np.ndarray]:
  """Our params -> HF tensor dict (numpy, `dtype`): Llama4ForCausalLM, or Llama4ForConditionalGeneration when the
  model has a vision tower."""
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  t = _text_prefix(cfg)
  out = {f"{t}model.embed_tokens.weight": params["embed"], f"{t}model.norm.weight": params["final_norm"]["scale"],
         f"{t}lm_head.weight": params["lm_head"].T}
  for i in range(cfg.num_hidden_layers):
    b, j = divmod(i, cfg.block_size)
    layer = params["blocks"][f"layer_{j}"]
    for suffix, ours, slot, _, to_hf in _layer_entries(cfg, j):
      out[f"{t}model.layers.{i}.{suffix}"] = to_hf(_slot(_leaf(layer, ours)[b], slot), cfg)
  for key, ours, j, _, to_hf in _vision_entries(cfg):
    out[key] = to_hf(_leaf(params, ours) if j is None else _leaf(params, ours)[j], cfg)
  return {k: np.ascontiguousarray(v).astype(dtype) for k, v in out.items()}


def save_hf(cfg: ModelConfig, params, path: str, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
            overwrite: bool = False) -> str:
  """Writes a directory that transformers' `Llama4ForCausalLM.from_pretrained` (or, with a vision tower,
  `Llama4ForConditionalGeneration.from_pretrained`) loads to the same logits.

  Everything is written into a temporary sibling directory that is renamed into place at the end, so `path` never
  holds a half-written checkpoint.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}.get(dtype)
  if np_dtype is None:
    raise ValueError(f"dtype={dtype!r} is not one of float32, bfloat16, float16")
  cfg, params = fold_forward_multipliers(cfg, params)  # Hugging Face's model has no multipliers: bake them in
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    tensors = hf_state_dict(cfg, params, np_dtype)
    shards = st.shard(((k, tensors[k].nbytes) for k in sorted(tensors)), max_shard_bytes)
    if len(shards) == 1:
      st.save_file(tensors, os.path.join(tmp, "model.safetensors"))
    else:
      weight_map = {}
      for n, names in enumerate(shards):
        fname = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        st.save_file({k: tensors[k] for k in names}, os.path.join(tmp, fname))
        weight_map.update({k: fname for k in names})
      total = sum(t.nbytes for t in tensors.values())
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config_to_hf(cfg, dtype), f, indent=2)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.replace(path, os.path.join(old, "x"))
      os.replace(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path
