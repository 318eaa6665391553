"""Train step: gradient accumulation, non-finite skipping, packing isolation in the loss, optimizer pieces."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import base
from llama4_jax.model import init_params
from llama4_jax.train import optimizer as opt
from llama4_jax.train.step import (LossConfig, guarded_update, init_state, loss_and_grads, sums, synthetic_batch,
                                   train_step)
from tests.conftest import tiny_config


def _batch(cfg, b=4, l=16, seed=0):
  rs = np.random.RandomState(seed)
  seg = np.ones((b, l), np.int32)
  seg[:, l // 2:] = 2  # two documents per row
  pos = np.concatenate([np.arange(l // 2), np.arange(l - l // 2)])[None].repeat(b, 0).astype(np.int32)
  mask = np.ones((b, l), np.int32)
  mask[-1, -3:] = 0
  seg[-1, -3:] = 0
  return {"inputs": rs.randint(0, cfg.vocab_size, (b, l)).astype(np.int32),
          "targets": rs.randint(0, cfg.vocab_size, (b, l)).astype(np.int32), "positions": pos,
          "segment_ids": seg, "loss_mask": mask}


def test_gradient_accumulation_equals_large_batch():
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(0))
  batch = _batch(cfg)
  s1, _, g1 = loss_and_grads(params, batch, cfg, LossConfig(1, 1e-3, 0.0))
  s2, _, g2 = loss_and_grads(params, batch, cfg, LossConfig(2, 1e-3, 0.0))
  s4, _, g4 = loss_and_grads(params, batch, cfg, LossConfig(4, 1e-3, 0.0))
  for s in (s2, s4):
    np.testing.assert_allclose(s["ce"], s1["ce"], rtol=1e-5)
  for g in (g2, g4):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g, g1)


def test_a_batch_without_positions_or_segment_ids_is_one_document_per_row():
  """`synthetic_batch(positions=False)`: the same sums and gradients, over micro-batches, as with positions and segment
  ids spelled out (the model-level equivalence: tests/unit/test_model.py)."""
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(2))
  spelled = synthetic_batch(cfg.vocab_size, 4, 20, seed=3)
  bare = synthetic_batch(cfg.vocab_size, 4, 20, seed=3, positions=False)
  assert set(spelled) - set(bare) == {"positions", "segment_ids"}
  run = jax.jit(lambda p, b: loss_and_grads(p, b, cfg, LossConfig(2, 1e-3, 0.0)))
  (s_bare, _, g_bare), (s_spelled, _, g_spelled) = run(params, bare), run(params, spelled)
  for k in ("ce", "z", "tokens"):
    np.testing.assert_allclose(s_bare[k], s_spelled[k], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g_bare, g_spelled)


def test_packed_documents_do_not_affect_each_others_loss():
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(1))
  batch = {k: v[:1] for k, v in _batch(cfg, b=1, l=20).items()}
  batch["loss_mask"][:] = 1
  batch["segment_ids"][:] = np.repeat([[1, 2]], 10, axis=1)
  batch["positions"][:] = np.tile(np.arange(10), 2)
  first = {k: v[:, :10] for k, v in batch.items()}
  second = {k: v[:, 10:] for k, v in batch.items()}
  packed = sums(params, batch, cfg, 0.0, 0.0)[0]["ce"]
  alone = sums(params, first, cfg, 0.0, 0.0)[0]["ce"] + sums(params, second, cfg, 0.0, 0.0)[0]["ce"]
  np.testing.assert_allclose(packed, alone, rtol=1e-5)
  # Changing document 1's tokens leaves document 2's loss unchanged.
  changed = dict(batch, inputs=batch["inputs"].copy())
  changed["inputs"][0, :10] = (changed["inputs"][0, :10] + 7) % cfg.vocab_size
  only_second = dict(changed, loss_mask=np.concatenate([np.zeros((1, 10)), np.ones((1, 10))], 1).astype(np.int32))
  ref_second = dict(batch, loss_mask=only_second["loss_mask"])
  np.testing.assert_allclose(sums(params, only_second, cfg, 0.0, 0.0)[0]["ce"],
                             sums(params, ref_second, cfg, 0.0, 0.0)[0]["ce"], rtol=1e-6)


def _optim(**kw):
  c = base.optim_config()
  c.update(kw)
  return c


def test_nonfinite_update_is_skipped_and_counted():
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(0))
  tx, schedule = opt.make_optimizer(_optim(warmup_steps=0), params, 10)
  state = init_state(params, tx)
  bad = jax.tree_util.tree_map(lambda x: x, params)
  bad["embed"] = bad["embed"].at[0, 0].set(jnp.nan)
  bad_state = state.replace(params=bad)
  batch = _batch(cfg)
  batch["inputs"][0, 0] = 0  # reads the NaN row
  new, metrics = train_step(bad_state, batch, jax.random.key(0), model_cfg=cfg, train_cfg=LossConfig(), tx=tx,
                            schedule=schedule)
  assert int(metrics["skipped"]) == 1 and int(new.nonfinite_in_a_row) == 1 and int(new.nonfinite_total) == 1
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                         new.params, bad_state.params)
  good, metrics = train_step(state, _batch(cfg), jax.random.key(0), model_cfg=cfg, train_cfg=LossConfig(), tx=tx,
                             schedule=schedule)
  assert int(metrics["skipped"]) == 0 and int(good.step) == 1
  assert not np.array_equal(np.asarray(good.params["embed"]), np.asarray(params["embed"]))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, 3e19])
def test_a_nonfinite_gradient_alone_skips_the_update(bad_value):
  # Finite loss, one bad gradient entry: NaN, inf, or finite values whose global norm overflows float32.
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(0))
  tx, _ = opt.make_optimizer(_optim(warmup_steps=0), params, 10)
  state = init_state(params, tx)
  grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 1e-3), params)
  new, skipped = guarded_update(state, grads, jnp.float32(2.5), tx)
  assert int(skipped) == 0 and int(new.step) == 1
  grads["final_norm"]["scale"] = grads["final_norm"]["scale"].at[0].set(bad_value)
  new, skipped = guarded_update(state, grads, jnp.float32(2.5), tx)
  assert int(skipped) == 1 and int(new.nonfinite_total) == 1
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new.params,
                         state.params)


def test_weight_decay_mask_and_lr_multipliers():
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(0))
  paths = opt.param_paths(params)
  assert paths["blocks"]["layer_1"]["moe"]["gate_up"] == "blocks/layer_1/moe/gate_up"
  mask = opt.weight_decay_mask(params, ("norm", "^embed$"))
  assert mask["blocks"]["layer_0"]["attn"]["q"] and not mask["final_norm"]["scale"] and not mask["embed"]
  mult = opt.lr_multiplier_tree(params, (("moe/(gate_up|down)$", 0.5), ("layer_1", 2.0)))
  assert mult["blocks"]["layer_1"]["moe"]["gate_up"] == 1.0 and mult["blocks"]["layer_3"]["moe"]["down"] == 0.5
  assert mult["blocks"]["layer_1"]["attn"]["q"] == 2.0 and mult["embed"] == 1.0
  # The multiplier scales the whole AdamW update of the matched leaves.
  config = _optim(warmup_steps=0, schedule="constant", clip_norm=0.0)
  tx1, _ = opt.make_optimizer(config, params, 10)
  config.lr_multipliers = (("^lm_head$", 0.25),)
  tx2, _ = opt.make_optimizer(config, params, 10)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  u1, _ = tx1.update(grads, tx1.init(params), params)
  u2, _ = tx2.update(grads, tx2.init(params), params)
  np.testing.assert_allclose(u2["lm_head"], 0.25 * u1["lm_head"], rtol=1e-6)
  np.testing.assert_allclose(u2["embed"], u1["embed"], rtol=1e-6)
  # Weight-decay multipliers scale only the decay term (zero gradients: the update is -lr x wd x f x param).
  config = _optim(warmup_steps=0, schedule="constant", clip_norm=0.0, weight_decay=0.5, learning_rate=0.1)
  config.weight_decay_exclude = ("norm", "^embed$")
  config.weight_decay_multipliers = (("attn/q$", 3.0),)
  tx3, _ = opt.make_optimizer(config, params, 10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  u3, _ = tx3.update(zeros, tx3.init(params), params)
  q, k = params["blocks"]["layer_0"]["attn"]["q"], params["blocks"]["layer_0"]["attn"]["k"]
  np.testing.assert_allclose(u3["blocks"]["layer_0"]["attn"]["q"], -0.1 * 0.5 * 3.0 * q, rtol=1e-6)
  np.testing.assert_allclose(u3["blocks"]["layer_0"]["attn"]["k"], -0.1 * 0.5 * k, rtol=1e-6)
  assert not np.any(u3["embed"]) and not np.any(u3["final_norm"]["scale"])


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_clip_by_global_norm_matches_optax(scale):
  """Below the limit the updates pass unchanged (bit for bit); above it they equal optax's clipping up to rounding
  and have the limit's norm; a zero gradient stays zero."""
  rs = np.random.RandomState(0)
  grads = {"a": jnp.asarray(rs.randn(3, 5).astype(np.float32) * scale),
           "b": jnp.asarray(rs.randn(7).astype(np.float32))}
  ours = opt.clip_by_global_norm(2.0)
  theirs = optax.clip_by_global_norm(2.0)
  u, _ = ours.update(grads, ours.init(grads))
  ref, _ = theirs.update(grads, theirs.init(grads))
  norm = float(optax.tree.norm(grads))
  for name in grads:
    if norm <= 2.0:
      np.testing.assert_array_equal(np.asarray(u[name]), np.asarray(grads[name]))
    np.testing.assert_allclose(np.asarray(u[name]), np.asarray(ref[name]), rtol=1e-6, atol=0)
  assert abs(float(optax.tree.norm(u)) - min(norm, 2.0)) < 1e-5 * max(norm, 1.0)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, grads)
  assert not any(np.any(np.asarray(z)) for z in jax.tree_util.tree_leaves(ours.update(zeros, ours.init(zeros))[0]))


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_then_decay(kind):
  s = opt.learning_rate_schedule(1.0, 100, 10, kind, min_ratio=0.1, decay_fraction=0.2)
  assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
  if kind == "cosine":
    assert 0.1 <= float(s(99)) < 0.2 and float(s(50)) < 1.0
  elif kind == "wsd":
    assert float(s(50)) == 1.0 and float(s(81)) == 1.0 and float(s(83)) < 1.0 and abs(float(s(100)) - 0.1) < 1e-6
  else:
    assert float(s(99)) == 1.0
  with pytest.raises(ValueError, match="optim.schedule"):
    opt.learning_rate_schedule(1.0, 100, 10, "linear")
