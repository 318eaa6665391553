"""Sharded model and training on 8 simulated CPU devices equal the single-device results (tests/conftest.py sets
the device count before JAX starts)."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from llama4_jax import sharding
from llama4_jax.config import ConfigError
from llama4_jax.model import apply, init_params
from llama4_jax.ops import expert_parallel
from llama4_jax.ops.moe import moe_dense, route
from llama4_jax.train.checkpoint import Checkpointer
from llama4_jax.train.optimizer import make_optimizer
from llama4_jax.train.step import LossConfig, init_state, synthetic_batch, train_step
from tests.conftest import tiny_config
from configs import base as base_configs

MESHES = ["data=8", "fsdp=8", "data=2,expert=4", "expert=8", "fsdp=2,expert=2,tensor=2", "data=4,tensor=2"]
BATCH, SEQ = 8, 20  # > 2 attention chunks of 8


def _cfg():
  # 8 experts (expert=8 divides), 4 query / 2 KV heads (tensor=2 divides), width 32 (fsdp=8 divides).
  return tiny_config(num_local_experts=8, num_experts_per_tok=2, moe_impl="blocked")


def _mesh(spec):
  return sharding.make_mesh(sharding.parse_mesh(spec))


def _shard_state(state, cfg, mesh):
  shardings = sharding.state_shardings(cfg, mesh, jax.eval_shape(lambda: state))
  return jax.device_put(state, shardings), shardings


def _logits_grads_dropped(cfg, params, tokens, parallel):
  """Logits, gradients of mean(logits^2) and the dropped-assignment count, in one compiled function."""
  def objective(p):
    logits, aux = apply(cfg, p, tokens, parallel=parallel)
    return jnp.mean(logits ** 2), (logits, sum(jnp.sum(layer["dropped"]) for layer in aux["moe"].values()))
  (_, (logits, dropped)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  return np.asarray(logits), grads, int(dropped)


@pytest.fixture(scope="module")
def single():
  """Single-device reference: logits, gradients and 5 training losses."""
  cfg = _cfg()
  params = init_params(cfg, jax.random.key(0))
  batch = synthetic_batch(cfg.vocab_size, BATCH, SEQ, seed=1)
  logits, grads, _ = _logits_grads_dropped(cfg, params, batch["inputs"], None)
  return cfg, params, batch, logits, grads, _train(cfg, params, batch, None)


def _train(cfg, params, batch, parallel, steps=5):
  optim = base_configs.optim_config()
  optim.update(learning_rate=1e-2, warmup_steps=1)
  tx, schedule = make_optimizer(optim, params, steps)
  state = init_state(params, tx)
  batches = [synthetic_batch(cfg.vocab_size, BATCH, SEQ, seed=10 + i) for i in range(steps)]
  step = functools.partial(train_step, model_cfg=cfg, train_cfg=LossConfig(1, 1e-4, 1e-2), tx=tx,
                           schedule=schedule, parallel=parallel)
  if parallel is None:
    fn = jax.jit(step)
  else:
    state, state_sh = _shard_state(state, cfg, parallel.mesh)
    batch_sh = NamedSharding(parallel.mesh, sharding.batch_spec())
    fn = jax.jit(step, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None))
    batches = [jax.device_put(b, batch_sh) for b in batches]
  losses, dropped = [], []
  for b in batches:
    state, m = fn(state, b, jax.random.key(0))
    losses.append(float(m["loss"]))
    dropped.append(int(m["moe_dropped"]))
  return np.asarray(losses), dropped


@pytest.mark.parametrize("spec", MESHES)
def test_sharded_logits_gradients_and_training_match_one_device(single, spec):
  cfg, params, batch, ref_logits, ref_grads, (ref_losses, _) = single
  mesh = _mesh(spec)
  par = sharding.Parallel(mesh, "all_to_all", capacity_factor=8.0)  # 8 = E / k x 2: nothing can be dropped
  p_sh = sharding.named(mesh, sharding.param_specs(cfg, mesh))
  params_s = jax.device_put(params, p_sh)
  tokens = jax.device_put(batch["inputs"], NamedSharding(mesh, sharding.batch_spec()))
  logits, grads, dropped = _logits_grads_dropped(cfg, params_s, tokens, par)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
  assert dropped == 0
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
  # The parameters really are split as the rules say.
  gate_up = params_s["blocks"]["layer_1"]["moe"]["gate_up"]
  assert gate_up.sharding.spec == sharding.logical_to_mesh(
      P("layers", "experts", "embed", None, "expert_mlp"), gate_up.shape, mesh)
  losses, dropped = _train(cfg, params, batch, par)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert dropped == [0] * 5


def test_dropless_ragged_transport_matches_one_device(single):
  cfg, params, batch, ref_logits, _, _ = single
  mesh = _mesh("data=2,expert=4")
  par = sharding.Parallel(mesh, "ragged_all_gather")
  params_s = jax.device_put(params, sharding.named(mesh, sharding.param_specs(cfg, mesh)))
  tokens = jax.device_put(batch["inputs"], NamedSharding(mesh, sharding.batch_spec()))
  logits = jax.jit(lambda p, t: apply(cfg, p, t, parallel=par)[0])(params_s, tokens)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5, rtol=1e-5)


def _routing(t, d, e, k, f, seed):
  rs = np.random.RandomState(seed)
  x = jnp.asarray(rs.randn(t, d), jnp.float32)
  router = jnp.asarray(rs.randn(d, e), jnp.float32)
  gate_up = jnp.asarray(rs.randn(e, d, 2, f) * 0.3, jnp.float32)
  down = jnp.asarray(rs.randn(e, f, d) * 0.3, jnp.float32)
  scores, experts, _ = route(x, router, k)
  return x, scores, experts, gate_up, down


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0])
def test_capacity_drops_are_counted_and_removed_exactly(capacity_factor):
  t, d, e, k, f = 64, 16, 8, 2, 8
  x, scores, experts, gate_up, down = _routing(t, d, e, k, f, seed=3)
  mesh = _mesh("data=2,expert=4")
  par = sharding.Parallel(mesh, "all_to_all", capacity_factor)
  y, dropped = jax.jit(lambda *a: expert_parallel.moe_expert_parallel(par, *a, impl="ragged_dot"))(
      x, scores, experts, gate_up, down)
  # Expected from the routing alone: 8 token shards of 8 tokens; per shard and expert, assignments past the
  # capacity (in token order) are dropped.
  shards = sharding.batch_parallelism(mesh)
  cap = expert_parallel.capacity(t // shards * k, e, capacity_factor)
  ex = np.asarray(experts).reshape(shards, -1)  # assignments of each shard in (token, slot) order
  keep = np.ones_like(ex, bool)
  for s in range(shards):
    for j in range(e):
      hits = np.flatnonzero(ex[s] == j)
      keep[s, hits[cap:]] = False
  assert int(dropped) == int((~keep).sum()) > 0
  # The output equals the oracle with exactly those assignments removed.
  kept_scores = jnp.where(jnp.asarray(keep.reshape(t, k)), scores, 0)
  np.testing.assert_allclose(np.asarray(y), np.asarray(moe_dense(x, kept_scores, experts, gate_up, down)),
                             atol=1e-5, rtol=1e-5)


def test_large_capacity_drops_nothing():
  t, d, e, k, f = 64, 16, 8, 2, 8
  x, scores, experts, gate_up, down = _routing(t, d, e, k, f, seed=4)
  par = sharding.Parallel(_mesh("expert=8"), "all_to_all", capacity_factor=e / k)
  y, dropped = jax.jit(lambda *a: expert_parallel.moe_expert_parallel(par, *a, impl="blocked"))(
      x, scores, experts, gate_up, down)
  assert int(dropped) == 0
  np.testing.assert_allclose(np.asarray(y), np.asarray(moe_dense(x, scores, experts, gate_up, down)),
                             atol=1e-5, rtol=1e-5)


def test_ragged_all_gather_has_ragged_all_to_all_semantics():
  """The emulation moves exactly the rows jax.lax.ragged_all_to_all's contract says (checked in numpy)."""
  n, rows_in, rows_out, d = 4, 6, 10, 3
  rs = np.random.RandomState(0)
  operand = rs.randn(n, rows_in, d).astype(np.float32)
  sizes = rs.randint(0, 3, (n, n)).astype(np.int32)  # sizes[i, j]: rows i sends to j
  in_off = (np.cumsum(sizes, 1) - sizes).astype(np.int32)
  out_off = (np.cumsum(sizes, 0) - sizes).astype(np.int32)  # in the receiver's frame
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ("expert",))
  fn = jax.shard_map(
      lambda o, io, s, oo: expert_parallel.ragged_all_gather(
          o[0], jnp.full((rows_out, d), -1.0), io[0], s[0], oo[0], s[0], axis_name="expert", axis_size=n)[None],
      mesh=mesh, in_specs=P("expert"), out_specs=P("expert"))
  got = np.asarray(fn(operand, in_off, sizes, out_off))
  want = np.full((n, rows_out, d), -1.0, np.float32)
  for i in range(n):
    for j in range(n):
      want[j, out_off[i, j]:out_off[i, j] + sizes[i, j]] = operand[i, in_off[i, j]:in_off[i, j] + sizes[i, j]]
  np.testing.assert_array_equal(got, want)


def test_checkpoint_written_on_one_mesh_restores_on_another(tmp_path, single):
  cfg, params, batch, ref_logits, _, _ = single
  src_mesh = _mesh("data=2,expert=4")
  tx, _ = make_optimizer(base_configs.optim_config(), params, 10)
  state, _ = _shard_state(init_state(params, tx), cfg, src_mesh)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2, keep_period=None, async_save=False)
  ckpt.save(3, state, {"it": 1}, {"stage": "x"}, force=True)
  ckpt.close()
  for spec, devices in (("data=1", jax.devices()[:1]), ("fsdp=2,tensor=2", jax.devices()[:4])):
    mesh = sharding.make_mesh(sharding.parse_mesh(spec), devices)
    abstract = jax.eval_shape(lambda: init_state(params, tx))
    target = sharding.with_shardings(abstract, sharding.state_shardings(cfg, mesh, abstract))
    reader = Checkpointer(str(tmp_path / "ckpt"), keep=2, keep_period=None, async_save=False)
    step, restored, _, _ = reader.restore_latest(target)
    reader.close()
    assert step == 3
    leaf = restored.params["blocks"]["layer_0"]["attn"]["q"]
    assert leaf.sharding.mesh.devices.size == len(devices)
    logits = jax.jit(lambda p: apply(cfg, p, batch["inputs"])[0])(jax.device_put(restored.params, jax.devices()[0]))
    np.testing.assert_array_equal(np.asarray(logits), ref_logits)


@pytest.mark.parametrize("mesh, field", [
    (dict(data=3), "mesh.data"),
    (dict(data=-1, fsdp=-1), "mesh.data, mesh.fsdp"),
    (dict(data=2, expert=2, tensor=3), "equal the device count"),
    (dict(data=0), "mesh.data"),
    (dict(dta=2), "mesh.dta"),
])
def test_bad_mesh_names_the_fields(mesh, field):
  with pytest.raises(ConfigError, match=re.escape(field)):
    sharding.make_mesh(sharding.MeshConfig.from_config(mesh))


@pytest.mark.parametrize("spec, overrides, field", [
    ("data=1,expert=8", dict(num_local_experts=4), "model.num_local_experts=4 is not divisible by mesh.expert=8"),
    ("data=2,tensor=4", dict(num_attention_heads=6, num_key_value_heads=2), "model.num_attention_heads=6"),
    ("data=4,tensor=2", dict(num_attention_heads=3, num_key_value_heads=1), "model.num_attention_heads=3"),
])
def test_model_that_does_not_split_names_the_fields(spec, overrides, field):
  with pytest.raises(ConfigError, match=re.escape(field)):
    sharding.check_model_fits(tiny_config(**overrides), _mesh(spec))


def test_batch_and_transport_errors():
  mesh = _mesh("data=2,expert=4")
  with pytest.raises(ConfigError, match=r"data.batch_size=12 is not divisible by mesh.data x mesh.fsdp x mesh.expert"):
    sharding.check_batch_fits(12, mesh)
  with pytest.raises(ConfigError, match="ragged_all_to_all.*GPU or TPU"):
    sharding.Parallel(mesh, "ragged_all_to_all")
  with pytest.raises(ConfigError, match="expert_parallel.transport='all2all'"):
    sharding.Parallel(mesh, "all2all")


def test_rules_table_splits_each_weight_as_documented():
  cfg = _cfg()
  specs = sharding.param_specs(cfg, _mesh("fsdp=2,expert=2,tensor=2"))
  layer = specs["blocks"]["layer_1"]  # RoPE + MoE layer
  assert layer["attn"]["q"] == P(None, ("fsdp", "expert"), "tensor", None)  # [layers, D, H, K]
  assert layer["moe"]["gate_up"] == P(None, "expert", "fsdp", None, "tensor")  # [layers, E, D, 2, F]
  assert layer["moe"]["down"] == P(None, "expert", "tensor", "fsdp")
  assert layer["moe"]["shared"]["gate_up"] == P(None, ("fsdp", "expert"), None, "tensor")
  assert layer["attn_norm"]["scale"] == P(None, None)
  # vocab 97 is odd: it stays whole rather than failing over tensor=2.
  assert specs["embed"] == P(None, ("fsdp", "expert")) and specs["lm_head"] == P(("fsdp", "expert"), None)
  # A dimension the axes do not divide stays whole instead of failing (width 30 over fsdp x expert = 4).
  assert sharding.logical_to_mesh(P("embed"), (30,), _mesh("fsdp=2,expert=2,tensor=2")) == P("fsdp")
  assert sharding.logical_to_mesh(P("embed"), (7,), _mesh("fsdp=2,expert=2,tensor=2")) == P(None)


def test_bf16_compute_trains_sharded_like_one_device(spec="fsdp=2,expert=2,tensor=2"):
  """bf16 compute keeps every matmul on XLA:CPU's bf16 kernels (ops/linear.py); partitioned, those matmuls must still
  compile and run (a bf16 matmul XLA:CPU cannot run in bf16 fails at run time), and train as on one device."""
  cfg = dataclasses.replace(_cfg(), dtype="bfloat16")
  params = init_params(cfg, jax.random.key(0))
  batch = synthetic_batch(cfg.vocab_size, BATCH, SEQ, seed=1)
  ref_losses, _ = _train(cfg, params, batch, None, steps=3)
  par = sharding.Parallel(_mesh(spec), "all_to_all", capacity_factor=8.0)
  losses, dropped = _train(cfg, params, batch, par, steps=3)
  assert np.all(np.isfinite(losses)) and ref_losses[-1] < ref_losses[0]
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-2)
  assert dropped == [0] * 3
