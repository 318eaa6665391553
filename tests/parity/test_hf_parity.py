"""Logit parity with Hugging Face transformers 5.23.0 (fp32, max |delta| <= 1e-4) on random tiny Llama 4 models.

Each case builds a random `Llama4ForCausalLM` with a fixed seed (no hub), saves it with `save_pretrained`, loads it
with `llama4_jax.load_hf` and compares logits on sequences longer than two attention chunks and not a multiple of
the chunk. The round trip `save_hf` -> `from_pretrained` must give the same logits too.
"""

import copy
import json
import os

import numpy as np
import pytest

import torch  # the parity oracle: installed by the README's test command ('.[test,torch]')
import transformers

import llama4_jax

pytestmark = pytest.mark.parity
TOL = 1e-4

LLAMA3_EMPTY_BAND = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 16.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 1.0, "original_max_position_embeddings": 64}
LLAMA3_MEDIUM_BAND = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
NO_SCALING = {"rope_type": "default", "rope_theta": 10000.0}

BASE = dict(vocab_size=101, hidden_size=32, intermediate_size=16, intermediate_size_mlp=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=1,
            interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=8, use_qk_norm=True,
            attn_temperature_tuning=True, floor_scale=4, attn_scale=0.1, rope_parameters=LLAMA3_EMPTY_BAND,
            initializer_range=0.1, rms_norm_eps=1e-5)

# (name, overrides, sequence length). Lengths exceed two chunks and are not multiples of the chunk.
CASES = [
    ("scout_like", {}, 21),
    ("maverick_like_no_qknorm_no_scaling", dict(use_qk_norm=False, rope_parameters=NO_SCALING), 19),
    ("all_moe_top2_16_experts", dict(interleave_moe_layer_step=1, num_local_experts=16, num_experts_per_tok=2), 20),
    ("nope_every_3rd_one_expert", dict(num_hidden_layers=6, no_rope_layer_interval=3, interleave_moe_layer_step=1,
                                       num_local_experts=1), 23),
    ("medium_band_llama3_top2", dict(rope_parameters=LLAMA3_MEDIUM_BAND, num_local_experts=3, num_experts_per_tok=2,
                                     no_rope_layer_interval=2), 27),
    ("temperature_tuning_off", dict(attn_temperature_tuning=False, attention_chunk_size=5), 17),
    ("odd_sizes", dict(vocab_size=97, hidden_size=36, num_attention_heads=6, num_key_value_heads=3, head_dim=6,
                       intermediate_size=10, intermediate_size_mlp=22, num_local_experts=5, attention_chunk_size=5,
                       floor_scale=3), 37),
    ("mha_no_gqa_long_chunk", dict(num_key_value_heads=4, attention_chunk_size=16, floor_scale=16), 50),
    # Layer patterns and context-extension methods of the length-generalization studies (issue 11).
    ("all_rope_chunked", dict(no_rope_layers=[1, 1, 1, 1]), 21),
    ("all_nope", dict(no_rope_layers=[0, 0, 0, 0]), 21),
    ("linear_interpolation", dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}), 21),
    ("dynamic_ntk_past_the_original_length", dict(
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}, max_position_embeddings=12,
        head_dim=16), 29),
    ("yarn_no_qknorm", dict(use_qk_norm=False, head_dim=16, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}), 29),
    ("yarn_given_attention_factor_qknorm", dict(head_dim=16, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 64,
        "attention_factor": 1.5, "beta_fast": 16.0, "beta_slow": 2.0}), 23),
]


def _hf_model(overrides, seed=0):
  cfg = transformers.Llama4TextConfig(**{**BASE, **overrides})
  torch.manual_seed(seed)
  return transformers.Llama4ForCausalLM(cfg).eval()


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


def _tokens(vocab, length, batch=2, seed=1):
  return np.random.RandomState(seed).randint(0, vocab, (batch, length))


@pytest.mark.parametrize("name,overrides,length", CASES, ids=[c[0] for c in CASES])
def test_logits_match_transformers(tmp_path, name, overrides, length):
  model = _hf_model(overrides)
  model.save_pretrained(tmp_path / "hf")
  cfg, params = llama4_jax.load_hf(str(tmp_path / "hf"))
  ids = _tokens(cfg.vocab_size, length)
  ref = _hf_logits(model, ids)
  ours = np.asarray(llama4_jax.forward(cfg, params, ids))
  assert ours.dtype == np.float32 and ours.shape == ref.shape
  assert np.abs(ref).max() > 0.1, "logits too small for the comparison to mean anything"
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name,overrides,length", [CASES[0], CASES[2]], ids=[CASES[0][0], CASES[2][0]])
def test_logits_match_transformers_with_pallas_kernels(tmp_path, name, overrides, length):
  """The same parity with the Pallas kernels (interpret mode on CPU) plugged in through the config."""
  model = _hf_model(overrides)
  model.save_pretrained(tmp_path / "hf")
  cfg, params = llama4_jax.load_hf(str(tmp_path / "hf"), moe_impl="pallas", attention_impl="pallas",
                                   kernel_interpret=True)
  ids = _tokens(cfg.vocab_size, length)
  np.testing.assert_allclose(np.asarray(llama4_jax.forward(cfg, params, ids)), _hf_logits(model, ids), atol=TOL,
                             rtol=0)


def test_temperature_tuning_is_active_in_the_cases():
  # floor_scale 4 makes the NoPE query scale differ from 1 from position 3 on, well inside the test sequences.
  from llama4_jax.ops.attention import temperature_scale
  scales = np.asarray(temperature_scale(np.arange(21)[None], 4, 0.1))
  assert scales[0, 2] == 1.0 and scales[0, 3] > 1.05


def test_save_hf_round_trip_through_transformers(tmp_path):
  model = _hf_model(dict(interleave_moe_layer_step=1, num_experts_per_tok=2))
  model.save_pretrained(tmp_path / "hf")
  cfg, params = llama4_jax.load_hf(str(tmp_path / "hf"))
  out = llama4_jax.save_hf(cfg, params, str(tmp_path / "exported"))
  reloaded = transformers.Llama4ForCausalLM.from_pretrained(out).eval()
  ids = _tokens(cfg.vocab_size, 22)
  np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(model, ids), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(llama4_jax.forward(cfg, params, ids)), _hf_logits(reloaded, ids),
                             atol=TOL, rtol=0)


def test_jax_initialised_model_exports_to_transformers(tmp_path):
  import jax
  from tests.conftest import tiny_config
  cfg = tiny_config(num_experts_per_tok=2, floor_scale=4.0)  # presets carry floats; transformers wants an int
  params = llama4_jax.init_params(cfg, jax.random.key(3))
  path = llama4_jax.save_hf(cfg, params, str(tmp_path / "exported"), max_shard_bytes=40_000)
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))  # sharded
  reloaded = transformers.Llama4ForCausalLM.from_pretrained(path).eval()
  ids = _tokens(cfg.vocab_size, 19)
  np.testing.assert_allclose(np.asarray(llama4_jax.forward(cfg, params, ids)), _hf_logits(reloaded, ids),
                             atol=TOL, rtol=0)


def test_old_config_spelling_and_bf16_checkpoint(tmp_path):
  """transformers 4.51-style `rope_theta` + `rope_scaling` config and bf16 tensors load to the same model."""
  model = _hf_model({})
  model.save_pretrained(tmp_path / "new")
  copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  with open(tmp_path / "bf16" / "config.json") as f:
    hf = json.load(f)
  rope = hf.pop("rope_parameters")
  hf["rope_theta"] = rope.pop("rope_theta")
  hf["rope_scaling"] = rope
  for key in ("layer_types", "moe_layers"):
    hf.pop(key, None)
  with open(tmp_path / "bf16" / "config.json", "w") as f:
    json.dump(hf, f)
  cfg_new, _ = llama4_jax.load_hf(str(tmp_path / "new"))
  cfg_old, params_old = llama4_jax.load_hf(str(tmp_path / "bf16"))
  assert cfg_old.rope_scaling == cfg_new.rope_scaling and cfg_old.rope_theta == cfg_new.rope_theta
  assert cfg_old.interleave_moe_layer_step == cfg_new.interleave_moe_layer_step
  assert cfg_old.no_rope_layer_interval == cfg_new.no_rope_layer_interval
  # Reference: transformers reading the same old-spelling bf16 directory, upcast to fp32.
  reference = transformers.Llama4ForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
  ids = _tokens(cfg_new.vocab_size, 21)
  ours = np.asarray(llama4_jax.forward(cfg_old, params_old, ids))
  np.testing.assert_allclose(ours, _hf_logits(reference, ids), atol=TOL, rtol=0)


@pytest.mark.parametrize("rope,pattern", [
    (dict(rope_type="ntk", factor=4.0), {}),  # goes out as a plain rope with the raised base
    (dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=12), {}),
    (dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, attention_factor=1.3), dict(
        use_qk_norm=False)),
    (dict(rope_type="linear", factor=2.0), dict(no_rope_layer_interval=0)),  # all RoPE
    (dict(rope_type="default"), dict(no_rope_layer_interval=1)),  # all NoPE
], ids=["ntk", "dynamic", "yarn", "linear_all_rope", "all_nope"])
def test_rope_extensions_and_layer_patterns_export_to_transformers(tmp_path, rope, pattern):
  """Each context-extension method and layer pattern of the length studies, from our config to transformers."""
  import jax
  from llama4_jax.config import RopeScaling
  from tests.conftest import tiny_config
  scaling = None if rope["rope_type"] == "default" else RopeScaling(**rope)
  cfg = tiny_config(head_dim=16, rope_scaling=scaling, **pattern)
  params = llama4_jax.init_params(cfg, jax.random.key(4))
  path = llama4_jax.save_hf(cfg, params, str(tmp_path / "exported"))
  reloaded = transformers.Llama4ForCausalLM.from_pretrained(path).eval()
  ids = _tokens(cfg.vocab_size, 29)  # past the chunk (8) and the original lengths (12, 16)
  ours = np.asarray(llama4_jax.forward(cfg, params, ids))
  assert np.abs(ours).max() > 0.1
  np.testing.assert_allclose(ours, _hf_logits(reloaded, ids), atol=TOL, rtol=0)
  again, _ = llama4_jax.load_hf(path)
  if rope["rope_type"] != "ntk":  # ntk comes back as the plain rope with its base
    assert again.rope_scaling == cfg.rope_scaling and again.no_rope_layer_interval == cfg.no_rope_layer_interval
  if rope["rope_type"] == "dynamic":  # config.json carries the original length; the model serves factor x it
    assert json.load(open(os.path.join(path, "config.json")))["max_position_embeddings"] == 12
    assert again.max_position_embeddings == 48


def test_yarn_attention_factor_is_normalised_away_by_qk_norm():
  """On Llama 4's RoPE layers the weightless qk-norm follows the rotation, so YaRN's cos/sin factor cannot change
  the logits; without qk-norm it does (both as in transformers, which the cases above compare against)."""
  import jax
  from llama4_jax.config import RopeScaling
  from tests.conftest import tiny_config
  ids = _tokens(97, 21)
  outs = {}
  for qk_norm in (True, False):
    for factor in (1.0, 1.5):
      cfg = tiny_config(head_dim=16, use_qk_norm=qk_norm, rope_scaling=RopeScaling(
          "yarn", 4.0, original_max_position_embeddings=16, attention_factor=factor))
      params = llama4_jax.init_params(cfg, jax.random.key(5))
      outs[qk_norm, factor] = np.asarray(llama4_jax.forward(cfg, params, ids))
  # equal up to the norm's eps (1e-5 against the small mean square of this tiny model's q and k)
  np.testing.assert_allclose(outs[True, 1.0], outs[True, 1.5], atol=1e-4)
  assert np.abs(outs[False, 1.0] - outs[False, 1.5]).max() > 1e-2
