"""Hugging Face safetensors import/export without torch: round trips, sharding, errors naming key and file."""

import functools
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from llama4_jax.config import ConfigError, RopeScaling
from llama4_jax.convert import safetensors_io as st
from llama4_jax.convert.hf import load_hf, save_hf
from llama4_jax.convert.hf_config import config_from_hf, config_to_hf
from llama4_jax.convert.safetensors_io import CheckpointError
from llama4_jax.model import param_shapes
from tests.conftest import tiny_config


@functools.lru_cache
def _shapes(cfg):
  return param_shapes(cfg)


def _params(cfg, seed=0):
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rs.randn(*s.shape).astype(np.float32), _shapes(cfg))


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _cfg(**overrides):
  # Special ids inside the tiny vocabulary: config_to_hf writes out-of-vocabulary ids as null (see below).
  return tiny_config(bos_token_id=0, eos_token_id=1, pad_token_id=2, **overrides)


@pytest.fixture
def saved(tmp_path):
  """A single-file tiny checkpoint: (directory, cfg, params)."""
  cfg = _cfg()
  params = _params(cfg)
  path = save_hf(cfg, params, str(tmp_path / "ckpt"))
  return path, cfg, params


def test_safetensors_round_trip(tmp_path):
  rs = np.random.RandomState(0)
  tensors = {"a.weight": rs.randn(3, 5).astype(np.float32),
             "b": rs.randn(2, 3, 4).astype(ml_dtypes.bfloat16),
             "c": np.arange(7, dtype=np.int32)}
  path = str(tmp_path / "t.safetensors")
  st.save_file(tensors, path)
  header, start = st.read_header(path)
  assert header["b"]["dtype"] == "BF16" and header["a.weight"]["dtype"] == "F32"
  assert start % 8 == 0
  loaded = st.load_file(path)
  assert sorted(loaded) == sorted(tensors)
  for name, arr in tensors.items():
    assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape, name
    np.testing.assert_array_equal(loaded[name].view(np.uint8), np.ascontiguousarray(arr).view(np.uint8), name)


def test_safetensors_round_trip_keeps_scalar_shape(tmp_path):
  path = str(tmp_path / "s.safetensors")
  st.save_file({"scale": np.array(2.5, np.float32)}, path)
  assert st.read_header(path)[0]["scale"]["shape"] == []
  loaded = st.load_file(path)["scale"]
  assert loaded.shape == () and float(loaded) == 2.5


def test_save_load_round_trip_float32(saved):
  path, cfg, params = saved
  assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
  cfg2, params2 = load_hf(path)
  assert cfg2 == cfg
  _assert_trees_equal(params2, params)


def test_save_load_round_trip_bfloat16(tmp_path):
  cfg = _cfg()
  params = _params(cfg, seed=1)
  path = save_hf(cfg, params, str(tmp_path / "bf16"), dtype="bfloat16")
  header, _ = st.read_header(os.path.join(path, "model.safetensors"))
  assert {info["dtype"] for info in header.values()} == {"BF16"}
  cfg2, params2 = load_hf(path)
  assert cfg2 == cfg
  for x, y in zip(jax.tree_util.tree_leaves(params2), jax.tree_util.tree_leaves(params)):
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, y, rtol=2 ** -8, atol=0)  # bfloat16 keeps 8 significant bits
  cfg3, params3 = load_hf(path, param_dtype="bfloat16")
  assert cfg3.param_dtype == "bfloat16"
  for x, y in zip(jax.tree_util.tree_leaves(params3), jax.tree_util.tree_leaves(params)):
    assert x.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(x, y.astype(ml_dtypes.bfloat16))


def test_sharded_save_round_trip(tmp_path):
  cfg = _cfg()
  params = _params(cfg, seed=2)
  path = save_hf(cfg, params, str(tmp_path / "sharded"), max_shard_bytes=16384)
  files = sorted(os.listdir(path))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert "model.safetensors.index.json" in files and "model.safetensors" not in files
  assert len(shards) > 1
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert sorted(set(index["weight_map"].values())) == shards
  sizes = {}
  for shard in shards:
    for name, arr in st.load_file(os.path.join(path, shard)).items():
      sizes[name] = arr.nbytes
      assert index["weight_map"][name] == shard
  assert index["metadata"]["total_size"] == sum(sizes.values())
  cfg2, params2 = load_hf(path)
  assert cfg2 == cfg
  _assert_trees_equal(params2, params)


def _rewrite(path, edit):
  """Loads model.safetensors, applies `edit` to a writable dict copy, writes it back."""
  file = os.path.join(path, "model.safetensors")
  tensors = {k: np.array(v) for k, v in st.load_file(file).items()}
  edit(tensors)
  st.save_file(tensors, file)
  return file


def _message(excinfo):
  return str(excinfo.value)


def test_missing_tensor_names_key_and_file(saved):
  path, _, _ = saved
  key = "model.layers.1.feed_forward.router.weight"
  file = _rewrite(path, lambda t: t.pop(key))
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert key in _message(excinfo)
  assert file in _message(excinfo)


def test_unexpected_tensor_names_key_and_file(saved):
  path, _, _ = saved
  key = "model.layers.0.feed_forward.router.weight"  # layer 0 is a dense layer in the tiny config
  file = _rewrite(path, lambda t: t.__setitem__(key, np.zeros((4, 32), np.float32)))
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert key in _message(excinfo) and file in _message(excinfo)


@pytest.mark.parametrize("key", [
    "model.layers.2.self_attn.q_proj.weight", "model.layers.3.feed_forward.experts.gate_up_proj",
    "model.layers.1.feed_forward.experts.down_proj", "lm_head.weight", "model.embed_tokens.weight"])
def test_wrong_shape_names_key_and_file(saved, key):
  path, _, _ = saved
  file = _rewrite(path, lambda t: t.__setitem__(key, np.zeros(t[key].shape[:-1] + (t[key].shape[-1] + 1,),
                                                              np.float32)))
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert key in _message(excinfo) and file in _message(excinfo)


def test_truncated_file_names_key_and_file(saved):
  path, _, _ = saved
  file = os.path.join(path, "model.safetensors")
  last_key = sorted(st.read_header(file)[0])[-1]  # tensors are written in sorted order: the last one is cut
  size = os.path.getsize(file)
  with open(file, "r+b") as f:
    f.truncate(size - 16)
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert last_key in _message(excinfo) and file in _message(excinfo)
  with open(file, "r+b") as f:
    f.truncate(20)  # inside the header
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert file in _message(excinfo)


def test_tensor_missing_from_its_shard_names_key_and_shard(tmp_path):
  cfg = _cfg()
  path = save_hf(cfg, _params(cfg), str(tmp_path / "sharded"), max_shard_bytes=16384)
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    weight_map = json.load(f)["weight_map"]
  key = "model.layers.2.self_attn.o_proj.weight"
  shard = os.path.join(path, weight_map[key])
  tensors = {k: np.array(v) for k, v in st.load_file(shard).items() if k != key}
  st.save_file(tensors, shard)
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert key in _message(excinfo) and shard in _message(excinfo)


def test_vision_architecture_without_text_config_is_a_config_error(saved):
  path, _, _ = saved
  cfg_file = os.path.join(path, "config.json")
  with open(cfg_file) as f:
    hf = json.load(f)
  hf["architectures"] = ["Llama4ForConditionalGeneration"]
  with open(cfg_file, "w") as f:
    json.dump(hf, f)
  with pytest.raises(ConfigError, match="Llama4ForConditionalGeneration config needs a 'text_config'"):
    load_hf(path)


def test_missing_config_json(saved):
  path, _, _ = saved
  os.remove(os.path.join(path, "config.json"))
  with pytest.raises(CheckpointError) as excinfo:
    load_hf(path)
  assert os.path.join(path, "config.json") in _message(excinfo)


def test_save_refuses_existing_path_unless_overwrite(saved):
  path, cfg, _ = saved
  new_params = _params(cfg, seed=7)
  with pytest.raises(FileExistsError):
    save_hf(cfg, new_params, path)
  _assert_trees_equal(load_hf(path)[1], saved[2])  # untouched
  save_hf(cfg, new_params, path, overwrite=True)
  _assert_trees_equal(load_hf(path)[1], new_params)
  assert sorted(os.listdir(os.path.dirname(path))) == ["ckpt"]  # no temporary or old directories left


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
  cfg = _cfg()
  params = _params(cfg)
  parent = tmp_path / "out"
  existing = save_hf(cfg, params, str(parent / "existing"))

  def boom(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(st, "save_file", boom)
  with pytest.raises(OSError, match="disk full"):
    save_hf(cfg, params, str(parent / "new"))
  assert sorted(os.listdir(parent)) == ["existing"]
  with pytest.raises(OSError, match="disk full"):
    save_hf(cfg, _params(cfg, seed=3), existing, overwrite=True)
  assert sorted(os.listdir(parent)) == ["existing"]
  monkeypatch.undo()
  _assert_trees_equal(load_hf(existing)[1], params)  # the old checkpoint survives a failed overwrite


def _hf_dict(**cfg_overrides):
  hf = config_to_hf(tiny_config(**cfg_overrides))
  hf.pop("layer_types")
  return hf


def test_config_from_hf_old_rope_spelling():
  # transformers 4.51: top-level rope_theta + rope_scaling (as in the released Scout config.json).
  hf = _hf_dict()
  del hf["rope_parameters"]
  hf["rope_theta"] = 500000.0
  hf["rope_scaling"] = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                        "original_max_position_embeddings": 8192, "rope_type": "llama3"}
  cfg = config_from_hf(hf)
  assert cfg.rope_theta == 500000.0
  assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
  hf["rope_scaling"] = None
  assert config_from_hf(hf).rope_scaling is None


def test_config_from_hf_new_rope_parameters():
  hf = _hf_dict()
  hf.pop("rope_theta", None)
  hf["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 250000.0, "factor": 16.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}
  cfg = config_from_hf(hf)
  assert cfg.rope_theta == 250000.0
  assert cfg.rope_scaling == RopeScaling("llama3", 16.0, 1.0, 1.0, 8192)
  hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 123.0}
  cfg = config_from_hf(hf)
  assert cfg.rope_theta == 123.0 and cfg.rope_scaling is None


def test_config_round_trip():
  cfg = _cfg(num_hidden_layers=8, use_qk_norm=False, attention_chunk_size=16, rope_scaling=None)
  assert config_from_hf(json.loads(json.dumps(config_to_hf(cfg)))) == cfg


def test_config_to_hf_drops_out_of_vocabulary_special_ids():
  # transformers asserts padding_idx < vocab_size, so ids outside the vocabulary are written as null.
  hf = config_to_hf(tiny_config(bos_token_id=5, eos_token_id=200001, pad_token_id=None))
  assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (5, None, None)
  assert config_from_hf(hf).bos_token_id == 5


def test_config_from_hf_reads_no_rope_layers_with_1_meaning_rope():
  hf = _hf_dict(num_hidden_layers=8)
  hf["no_rope_layer_interval"] = 4
  hf["no_rope_layers"] = [1, 0] * 4  # HF: 1 = the layer USES RoPE, so layers 1, 3, 5, 7 are NoPE
  cfg = config_from_hf(hf)
  assert cfg.no_rope_layer_interval == 2
  assert [cfg.is_rope_layer(i) for i in range(8)] == [True, False] * 4
  hf["no_rope_layers"] = [1, 1, 1, 0] * 2
  cfg = config_from_hf(hf)
  assert cfg.no_rope_layer_interval == 4 and not cfg.is_rope_layer(3) and cfg.is_rope_layer(0)
  # Read the other way round this list would mean "only layers 3 and 7 use RoPE": not a supported pattern.
  hf["no_rope_layers"] = [0, 0, 0, 1] * 2
  with pytest.raises(ConfigError, match="no_rope_layers"):
    config_from_hf(hf)
