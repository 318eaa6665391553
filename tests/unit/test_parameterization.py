"""Parameterizations (llama4_jax/parameterization.py): identity at the base shape, the rules table on a tiny model's
real parameters (init std, forward multipliers, per-group learning rates), folding, bad settings."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from llama4_jax import parameterization as pz
from llama4_jax.config import ConfigError, model_config
from llama4_jax.convert.hf import load_hf, save_hf
from llama4_jax.model import apply as _apply
from llama4_jax.model import init_params
from llama4_jax.model.multipliers import fold_forward_multipliers, leaf_factors, param_paths
from llama4_jax.train.loop import resolve_stages
from llama4_jax.train.optimizer import lr_multiplier_tree, make_optimizer
from llama4_jax.train.step import LossConfig, init_state, train_step

SHAPE = dict(vocab_size=4096, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, intermediate_size=16, intermediate_size_mlp=24, num_local_experts=4, attention_chunk_size=8,
             initializer_range=0.1)
BASE = dict(hidden_size=32, num_attention_heads=4, head_dim=8, intermediate_size=16, intermediate_size_mlp=24,
            num_local_experts=4, num_hidden_layers=4, batch_size=8, tokens=0)


apply = jax.jit(_apply, static_argnums=0)  # eager, the scanned model runs op by op


def _config(kind="standard", **model):
  config = base.get_config("tiny")
  config.model.update({**SHAPE, **model})
  config.data.update(batch_size=8, seq_len=16)  # 8 simulated devices
  config.train.update(steps=10)
  config.parameterization = kind
  config.param_scaling.base.update(BASE)
  return config


def _stage(config):
  (_, _, cfg), = resolve_stages(config)
  return cfg


def _step(cfg, params):
  """One AdamW update of `params` on a fixed batch: (loss, new params)."""
  model_cfg = model_config(cfg)
  tx, schedule = make_optimizer(cfg.optim, params, cfg.train.steps)
  tokens = jax.random.randint(jax.random.key(1), (8, 17), 0, model_cfg.vocab_size)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": jnp.ones((8, 16), jnp.int32),
           "positions": jnp.tile(jnp.arange(16), (8, 1)), "segment_ids": jnp.ones((8, 16), jnp.int32)}
  step = jax.jit(functools.partial(train_step, model_cfg=model_cfg, train_cfg=LossConfig.from_config(cfg.train),
                                   tx=tx, schedule=schedule))
  state, metrics = step(init_state(params, tx), batch, None)
  return metrics["loss"], state.params


def test_every_multiplier_at_one_is_standard_parameterization():
  std = _stage(_config("standard"))
  for kind in ("mup", "completep", "metap"):  # at the base shape nothing is added to model or optimizer
    other = _stage(_config(kind))
    assert model_config(other) == model_config(std) and other.optim == std.optim, kind
  # ... so one update is bit-identical (mup's stage config against standard's)
  params = init_params(model_config(std), jax.random.key(0))
  loss_a, new_a = _step(std, params)
  loss_b, new_b = _step(_stage(_config("mup")), init_params(model_config(other), jax.random.key(0)))
  assert float(loss_a) == float(loss_b)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_a, new_b)


def _group_of(path):
  return [g for g, pattern, _, _ in pz.LEAVES if re.search(pattern, path)]


def test_every_text_parameter_has_one_group_and_vision_none():
  config = base.get_config("tiny_vl")
  params = jax.eval_shape(lambda: init_params(model_config(config), jax.random.key(0)))
  paths = jax.tree_util.tree_leaves(param_paths(params))
  for path in paths:
    groups = _group_of(path)
    if path.startswith(("blocks/", "embed", "final_norm", "lm_head")):
      assert len(groups) == 1, (path, groups)
    else:
      assert groups == [], path  # the vision tower keeps its own init and learning rate


def test_mup_and_completep_rules_on_a_twice_wider_twice_deeper_model():
  wide = dict(hidden_size=64, num_attention_heads=8, intermediate_size=32, intermediate_size_mlp=48,
              num_hidden_layers=8)
  std = _stage(_config("standard", **wide))
  params_std = init_params(model_config(std), jax.random.key(0))
  for kind, alpha in (("mup", 0.0), ("completep", 1.0)):
    cfg = _stage(_config(kind, **wide))
    mcfg = model_config(cfg)
    lr = lr_multiplier_tree(params_std, tuple(map(tuple, cfg.optim.lr_multipliers)))
    wd = leaf_factors(params_std, tuple(map(tuple, cfg.optim.weight_decay_multipliers)))
    init = leaf_factors(params_std, mcfg.init_multipliers)
    fwd = leaf_factors(params_std, mcfg.forward_multipliers)
    params = init_params(mcfg, jax.random.key(0)) if kind == "mup" else None
    for path, group in [("blocks/layer_0/attn/q", "hidden"), ("blocks/layer_0/attn/o", "hidden"),
                        ("blocks/layer_0/mlp/down", "hidden"), ("blocks/layer_1/moe/gate_up", "hidden"),
                        ("blocks/layer_1/moe/down", "hidden"), ("blocks/layer_1/moe/shared/down", "hidden"),
                        ("blocks/layer_1/moe/router", "readout"), ("lm_head", "readout"), ("embed", "vector"),
                        ("final_norm/scale", "vector"), ("blocks/layer_0/attn_norm/scale", "vector")]:
      keys = path.split("/")
      get = lambda tree: functools.reduce(lambda t, k: t[k], keys, tree)  # noqa: E731
      want_init, want_lr = {"hidden": (2 ** -0.5, 0.5), "readout": (1.0, 1.0), "vector": (1.0, 1.0)}[group]
      residual = path.endswith(("attn/o", "down"))
      want_fwd = (0.5 if group == "readout" else 1.0) * (2.0 ** -alpha if residual else 1.0)
      assert get(lr) == pytest.approx(want_lr) and get(init) == pytest.approx(want_init), (kind, path)
      assert get(lr) * get(wd) == pytest.approx(1.0), (kind, path)  # coupled decay: lr x wd as at the base width
      assert get(fwd) == pytest.approx(want_fwd), (kind, path)
      if params is not None:  # init std x factor: the same draw as standard's, scaled
        np.testing.assert_allclose(get(params), get(params_std) * want_init, rtol=1e-6, atol=0)
    assert cfg.optim.learning_rate == std.optim.learning_rate  # no batch / token rule configured


def test_forward_multiplier_scales_the_output_and_its_gradient():
  cfg = model_config(_config("standard"))
  params = init_params(cfg, jax.random.key(0))
  scaled = cfg.__class__(**{**cfg.__dict__, "forward_multipliers": ((r"^lm_head$", 0.25),
                                                                    (r"attn/o$", 3.0))})
  tokens = jnp.arange(16).reshape(2, 8)
  loss = jax.jit(jax.value_and_grad(lambda p, c: jnp.sum(_apply(c, p, tokens)[0] ** 2)), static_argnums=1)
  folded_cfg, folded = fold_forward_multipliers(scaled, params)
  assert folded_cfg == cfg  # the same model without multipliers ...
  np.testing.assert_allclose(folded["lm_head"], 0.25 * params["lm_head"])
  value, grads = loss(params, scaled)
  value_folded, grads_folded = loss(folded, cfg)  # ... on the scaled weights computes the same function
  np.testing.assert_allclose(value, value_folded, rtol=1e-5)
  np.testing.assert_allclose(grads["lm_head"], 0.25 * grads_folded["lm_head"], rtol=1e-4, atol=1e-9)
  o, o_folded = grads["blocks"]["layer_0"]["attn"]["o"], grads_folded["blocks"]["layer_0"]["attn"]["o"]
  np.testing.assert_allclose(o, 3.0 * o_folded, rtol=1e-4, atol=1e-9)


def test_metap_takes_every_constant_and_exponent_from_config():
  config = _config("metap", hidden_size=64, num_attention_heads=8, num_local_experts=8)
  s = config.param_scaling
  s.metap.embedding.update(lr=4.0, init=0.5)
  s.metap.routed_experts.update(lr_experts=-1.0)
  s.metap.readout.update(init=0.0)  # zero-init readout
  s.update(batch_exponent=0.5, token_exponent=-0.5)
  s.base.update(batch_size=2, tokens=16 * 8 * 10 * 4)  # B x4, T / 4: x 2 x 2
  cfg = _stage(config)
  mcfg = model_config(cfg)
  params = init_params(mcfg, jax.random.key(0))
  lr = lr_multiplier_tree(params, tuple(map(tuple, cfg.optim.lr_multipliers)))
  assert lr["embed"] == 4.0 and lr["blocks"]["layer_1"]["moe"]["down"] == pytest.approx(0.5)  # m_E^-1 (fan-in F)
  assert lr["blocks"]["layer_1"]["moe"]["shared"]["down"] == pytest.approx(1.0)  # expert width unchanged
  assert lr["blocks"]["layer_1"]["moe"]["gate_up"] == pytest.approx(0.5 * 0.5)
  assert not np.any(params["lm_head"]) and float(jnp.std(params["embed"])) == pytest.approx(0.05, rel=0.05)
  assert cfg.optim.learning_rate == pytest.approx(config.optim.learning_rate * 2.0 * 2.0)


def test_coupled_weight_decay_keeps_the_decay_step_width_invariant():
  """With zero gradients an AdamW step is pure decay, -lr x wd x param: under mup a twice-wider model's hidden
  matrices decay by the base step (LR / 2, decay x 2), the embedding by the base step too, the norms not at all;
  metap's wd_width sets the exponent."""
  wide = dict(hidden_size=64, num_attention_heads=8, intermediate_size=32, intermediate_size_mlp=48)
  for kind, wd_width, want_q in (("mup", None, 1.0), ("metap", 0.0, 0.5), ("metap", 2.0, 2.0)):
    config = _config(kind, **wide)
    config.optim.update(schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=0.5, learning_rate=0.1)
    if wd_width is not None:
      config.param_scaling.metap.attn_q.wd_width = wd_width
    cfg = _stage(config)
    params = init_params(model_config(cfg), jax.random.key(0))
    tx, _ = make_optimizer(cfg.optim, params, 10)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    step = lambda tree: -tree / (0.1 * 0.5)  # noqa: E731  (the step in units of lr x wd x param)
    q = params["blocks"]["layer_0"]["attn"]["q"]
    np.testing.assert_allclose(step(updates["blocks"]["layer_0"]["attn"]["q"]), want_q * q, rtol=1e-5)
    np.testing.assert_allclose(step(updates["blocks"]["layer_1"]["moe"]["gate_up"]), params["blocks"]["layer_1"][
        "moe"]["gate_up"], rtol=1e-5)
    np.testing.assert_allclose(step(updates["embed"]), params["embed"], rtol=1e-5)
    assert not np.any(updates["final_norm"]["scale"])  # excluded from decay ('norm')


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c, "parameterization", "mu_p"), r"parameterization='mu_p' is not one of"),
    (lambda c: c.param_scaling.metap.__delattr__("router"), r"param_scaling.metap.router is missing"),
    (lambda c: setattr(c.param_scaling.metap.router, "lr_widht", -1.0),
     r"param_scaling.metap.router: unknown key\(s\) \['lr_widht'\]"),
    (lambda c: c.param_scaling.base.update(hidden_size=-1), r"param_scaling.base.hidden_size must be a number"),
])
def test_bad_parameterization_settings_name_the_key(change, message):
  config = _config("metap")
  change(config)
  with pytest.raises(ConfigError, match=r"stages.pretrain: " + message):
    resolve_stages(config)


def test_hugging_face_export_bakes_the_forward_multipliers_in(tmp_path):
  cfg = model_config(_config("standard"))
  params = init_params(cfg, jax.random.key(0))
  scaled = cfg.__class__(**{**cfg.__dict__, "forward_multipliers": ((r"^lm_head$", 0.25),)})
  save_hf(scaled, params, str(tmp_path / "scaled"))
  save_hf(*fold_forward_multipliers(scaled, params), str(tmp_path / "folded"))
  for name in ("model.safetensors", "config.json"):
    assert (tmp_path / "scaled" / name).read_bytes() == (tmp_path / "folded" / name).read_bytes()
  _, loaded = load_hf(str(tmp_path / "scaled"))
  np.testing.assert_array_equal(loaded["lm_head"], 0.25 * np.asarray(params["lm_head"]))
