"""`train_and_evaluate(config, workdir)`: runs an experiment's stages in order, resumably.

An experiment config holds the base sections (model, data, optim, train), a `stages` dict of named stages, each with
a `kind` and `overrides` (a nested dict applied on top of the base sections), and `stage_order`. Each stage starts
from the previous stage's final parameters (and optimizer state unless `train.reset_optimizer`) and keeps its own
checkpoints under `<workdir>/checkpoints/<stage>`; a finished stage is skipped on restart.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from llama4_jax import parameterization, sharding
from llama4_jax.config import ConfigError, model_config, to_dict
from llama4_jax.model import init_params, param_shapes
from llama4_jax.train import data as train_data
from llama4_jax.train import distill, dpo_stage, rl_stage, sft, workdir_lock
from llama4_jax.train.checkpoint import Checkpointer, CheckpointMismatchError
from llama4_jax.train.console import Progress, summary
from llama4_jax.train.metrics import MetricsWriter
from llama4_jax.train.optimizer import make_optimizer
from llama4_jax.train.step import LossConfig, eval_step, init_state, train_step

# lm: next-token prediction on config.data; sft: train/sft.py; rl: train/rl_stage.py; dpo: train/dpo_stage.py;
# distill: train/distill.py (codistillation from a teacher checkpoint on config.data)
STAGE_KINDS = ("lm", "sft", "rl", "dpo", "distill")


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was saved. Running the same command again resumes."""


class NonFiniteError(RuntimeError):
  """Too many consecutive updates had a non-finite loss or gradient."""


def _apply_overrides(target: ConfigDict, overrides, prefix: str) -> None:
  for key, value in overrides.items():
    if key not in target:
      raise ConfigError(f"{prefix}.{key}: no such key in the base config")
    if isinstance(value, (ConfigDict, dict)) and isinstance(target[key], ConfigDict):
      _apply_overrides(target[key], value, f"{prefix}.{key}")
    else:
      try:
        target[key] = value
      except TypeError as e:
        raise ConfigError(f"{prefix}.{key}: {e}") from e


def resolve_stages(config: ConfigDict) -> list[tuple[str, str, ConfigDict]]:
  """(name, kind, fully overridden config) per stage, validated before anything is compiled."""
  stages = []
  for name in config.stage_order:
    if name not in config.stages:
      raise ConfigError(f"stage_order names {name!r}, which is not in config.stages ({list(config.stages)})")
    stage = config.stages[name]
    if stage.kind not in STAGE_KINDS:
      raise ConfigError(f"stages.{name}.kind={stage.kind!r} is not one of {STAGE_KINDS}")
    resolved = copy.deepcopy(config)
    _apply_overrides(resolved, stage.get("overrides", {}), f"stages.{name}.overrides")
    try:
      parameterization.apply(resolved)  # per-group init / forward / learning-rate factors into model and optim
    except ConfigError as e:
      raise ConfigError(f"stages.{name}: {e}") from e
    stages.append((name, stage.kind, resolved))
  if not stages:
    raise ConfigError("config.stage_order is empty")
  shapes = None
  for name, kind, cfg in stages:
    model_cfg = model_config(cfg)
    train_data.check_data_config(cfg.data, model_cfg)
    if kind in ("sft", "rl", "dpo"):
      _check_post_training(name, kind, cfg, model_cfg)
    if kind == "distill":
      try:
        distill.check_config(cfg, model_cfg)
      except ConfigError as e:
        raise ConfigError(f"stages.{name}: {e}") from e
    if cfg.train.steps <= 0:
      raise ConfigError(f"stages.{name}: train.steps must be positive, got {cfg.train.steps}")
    if cfg.data.batch_size % (cfg.train.micro_batches * jax.process_count()):
      raise ConfigError(f"stages.{name}: data.batch_size={cfg.data.batch_size} is not divisible by "
                        f"train.micro_batches={cfg.train.micro_batches} x processes={jax.process_count()}")
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(cfg.mesh))
    sharding.check_model_fits(model_cfg, mesh)
    sharding.check_batch_fits(cfg.data.batch_size // cfg.train.micro_batches, mesh,
                              f"stages.{name}: data.batch_size / train.micro_batches")
    sharding.parallel_from_config(cfg, mesh)
    stage_shapes = jax.tree_util.tree_map(lambda s: s.shape, param_shapes(model_cfg))
    if shapes is not None and stage_shapes != shapes:
      raise ConfigError(f"stages.{name}: model overrides change parameter shapes; stages must share them")
    shapes = stage_shapes
  return stages


def _check_post_training(name: str, kind: str, cfg: ConfigDict, model_cfg) -> None:
  """Task, filter and RL settings, and that every example (sft) or prompt + reply (rl) fits a row; no weights needed."""
  try:
    sft.check_config(cfg)
    sft.check_image_families(cfg, kind, model_cfg)
    chat = sft.ChatFormat(train_data.tokenizer_for(cfg.data.tokenizer_path, cfg.data.num_reserved_special_tokens))
    if kind in ("rl", "dpo"):
      (rl_stage if kind == "rl" else dpo_stage).check_config(cfg)
      rl_stage.check_fits(cfg, chat, model_cfg)
      if jax.process_count() > 1:
        raise ConfigError(f"{kind} stages run in a single process (their samples are drawn on the host)")
    for split in ("train", "held_out"):  # whole examples (rl / dpo: image prompts are checked above)
      problems = [p for p in sft.task_problems(cfg.tasks, split) if kind == "sft" or not p.images]
      examples = [sft.encode_example(p, chat, model_cfg) for p in problems]
      if examples:
        tiles = sft.tile_layout(model_cfg, examples, cfg.data.get("tiles_per_row", 0))[0]
        sft.check_fits(examples, cfg.data.seq_len, tiles)
  except (ConfigError, RuntimeError) as e:
    raise ConfigError(f"stages.{name}: {e}") from e


def _fingerprint(stages) -> dict:
  how = ("moe_impl", "attention_impl", "kernel_interpret", "moe_capacity_factor")  # how it computes, not what
  unset = ("init_multipliers", "forward_multipliers")  # recorded only when set: older workdirs stay resumable
  return {name: {"kind": kind, "model": {k: v for k, v in to_dict(model_config(cfg)).items()
                                         if k not in how and not (k in unset and not v)},
                 "tokenizer": cfg.data.tokenizer_path,
                 "reserved": cfg.data.num_reserved_special_tokens} for name, kind, cfg in stages}


def _check_workdir(workdir: str, fingerprint: dict) -> None:
  """Refuses a workdir whose checkpoints belong to another model / tokenizer; records ours otherwise."""
  path = os.path.join(workdir, "experiment.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != json.loads(json.dumps(fingerprint)):
      diff = sorted({f"{s}.{k}" for s in set(old) | set(fingerprint)
                     for k in set(old.get(s, {})) | set(fingerprint.get(s, {}))
                     if json.dumps(old.get(s, {}).get(k)) != json.dumps(fingerprint.get(s, {}).get(k))})
      raise CheckpointMismatchError(
          f"{workdir} holds a run of an incompatible configuration (differs in {diff[:6]}); "
          "use a new --workdir or delete the old one")
    return
  os.makedirs(workdir, exist_ok=True)
  _write_json(path, fingerprint)


def _moe_load(stats, block_size: int) -> dict:
  """Per global MoE layer: the expert shares of routed tokens and max share x E (1.0 = perfectly balanced)."""
  out = {}
  for name, layer in stats.items():
    fractions = np.asarray(layer["expert_fraction"])
    for b, row in enumerate(fractions):
      i = b * block_size + int(name.split("_")[1])
      out[f"moe_load_max/layer_{i}"] = float(row.max() * row.shape[0])
      out[f"moe_expert_fraction/layer_{i}"] = row.tolist()
  return out


def _evaluate(eval_fn, params, batches) -> dict:
  ce = tokens = 0.0
  for batch in batches:
    out = jax.device_get(eval_fn(params, batch))
    ce, tokens = ce + float(out["ce"]), tokens + float(out["tokens"])
  loss = ce / max(tokens, 1.0)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": int(tokens)}


def _evaluate_all(eval_fn, params, sets: dict) -> dict:
  """`eval_loss`, `eval_perplexity`, `eval_tokens` on the text set; `<name>_loss` on every other set."""
  out = _evaluate(eval_fn, params, sets["eval"])
  for name, batches in sets.items():
    if name != "eval":
      out[f"{name}_loss"] = _evaluate(eval_fn, params, batches)["eval_loss"]
  return out


def _global_batch(batch_sh, batch_size: int, local: dict) -> dict:
  """This process's rows -> global arrays split over the mesh's batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sh, v, (batch_size,) + v.shape[1:])
          for k, v in local.items()}


def run_stage(name: str, cfg: ConfigDict, workdir: str, carried, offset: int, writer: MetricsWriter, stop,
              kind: str = "lm"):
  """Trains one stage to `cfg.train.steps`; returns (final state, summary row)."""
  model_cfg, tcfg = model_config(cfg), cfg.train
  docs = train_data.documents(cfg.data, model_cfg)
  mesh = sharding.make_mesh(sharding.MeshConfig.from_config(cfg.mesh))
  parallel = sharding.parallel_from_config(cfg, mesh) if mesh.size > 1 else None
  param_sh = sharding.named(mesh, sharding.param_specs(model_cfg, mesh))
  batch_sh = NamedSharding(mesh, sharding.batch_spec())
  if carried is not None:
    params = jax.device_put(carried.params, param_sh)
  else:
    params = jax.jit(functools.partial(init_params, model_cfg), out_shardings=param_sh)(jax.random.key(cfg.seed))
  tx, schedule = make_optimizer(cfg.optim, params, tcfg.steps)
  abstract = jax.eval_shape(functools.partial(init_state, tx=tx), params)
  state_sh = sharding.state_shardings(model_cfg, mesh, abstract)
  state = jax.jit(functools.partial(init_state, tx=tx), out_shardings=state_sh)(params)
  if carried is not None and not tcfg.reset_optimizer:
    state = state.replace(opt_state=jax.device_put(carried.opt_state, state_sh.opt_state))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), tcfg.keep_checkpoints, tcfg.keep_period,
                      tcfg.async_checkpoint)
  record = {"stage": name, "complete": False, "seed": cfg.seed}
  entry_params = state.params  # the model entering the stage (the SFT difficulty filter scores with it)
  # Restores onto this run's mesh, whatever mesh wrote the checkpoint.
  restored = ckpt.restore_latest(sharding.with_shardings(abstract, state_sh))
  step, data_state = 0, None
  if restored is not None:
    step, state, data_state, old_record = restored
    if old_record.get("complete"):
      ckpt.close()
      return state, {"stage": name, "steps": step, "resumed": "complete", **old_record.get("summary", {})}
  sft_data = driver = None
  tok = train_data.tokenizer_for(cfg.data.tokenizer_path, cfg.data.num_reserved_special_tokens)
  if kind == "sft":
    select = functools.partial(train_data._process_rows, batch_size=cfg.data.batch_size)
    sft_data = sft.SFTData(cfg, model_cfg, entry_params, tok, cfg.seed, select)
    train_it = sft_data.train
  elif kind in ("rl", "dpo"):
    make = rl_stage.RLDriver if kind == "rl" else dpo_stage.DPODriver
    driver = train_it = make(cfg, model_cfg, tok, entry_params, tx, cfg.seed)
  else:
    train_it = iter(train_data.train_batches(cfg.data, docs["train"], cfg.seed, model_cfg))
  if data_state is not None:
    train_it.set_state(data_state)
  writer.truncate_after(offset + step)
  step_fn = jax.jit(functools.partial(train_step, model_cfg=model_cfg, train_cfg=LossConfig.from_config(tcfg),
                                      tx=tx, schedule=schedule, parallel=parallel),
                    in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model_cfg=model_cfg, parallel=parallel),
                    in_shardings=(param_sh, batch_sh))
  to_global = functools.partial(_global_batch, batch_sh, cfg.data.batch_size)
  eval_sets = {"eval": [to_global(b) for b in train_data.eval_batches(cfg.data, docs["eval"], model_cfg)]}
  if model_cfg.vision is not None:  # held-out image questions: answer loss with the images and with blank ones
    eval_sets["eval_image_answer"] = [to_global(b) for b in train_data.image_eval_batches(cfg.data, model_cfg)]
    eval_sets["eval_blank_image_answer"] = [to_global(b) for b in
                                            train_data.image_eval_batches(cfg.data, model_cfg, blank=True)]
  if sft_data is not None:  # held-out problems: reply loss (teacher-forced) and greedy pass@1
    eval_sets["eval_sft_answer"] = [to_global(train_data._process_rows(b, cfg.data.batch_size))
                                    for b in sft_data.eval_rows]

  def evaluate(params) -> dict:
    out = _evaluate_all(eval_fn, params, eval_sets)
    extra = sft_data.pass_at_1(params) if sft_data else driver.evaluate(params) if driver else {}
    out.update({f"eval_{k}": v for k, v in extra.items()})
    return out

  base_key = jax.random.key(cfg.seed)
  if driver is not None:
    update = driver.update
  elif kind == "distill":
    update = _distill_update(cfg, model_cfg, tx, mesh, train_it, to_global)
  else:
    update = lambda state, step: step_fn(state, to_global(next(train_it)),  # noqa: E731
                                         jax.random.fold_in(base_key, offset + step))

  progress = Progress(name, step, tcfg.steps, enabled=tcfg.progress and jax.process_index() == 0)
  row = {"stage": name, "steps": tcfg.steps, "tokens": 0, "seconds": 0.0, "skipped": 0}
  if sft_data is not None:
    row.update(sft_data.filter_stats)
    writer.write(offset + step, {"stage": name, **sft_data.filter_stats})
  t_log, tok_log, t_start = time.perf_counter(), 0.0, time.perf_counter()
  while step < tcfg.steps:
    state, metrics = update(state, step)
    step += 1
    in_a_row = int(state.nonfinite_in_a_row)
    tok_log = tok_log + metrics["tokens"]  # stays on device until the next log
    if step % tcfg.log_every == 0 or step in (1, tcfg.steps) or in_a_row:
      m = jax.device_get(metrics)
      tok_log = float(jax.device_get(tok_log))
      now = time.perf_counter()
      tps = tok_log / max(now - t_log, 1e-9)
      row["tokens"] += int(tok_log)
      t_log, tok_log = now, 0.0
      scalars = {k: float(v) for k, v in m.items() if k != "expert_load"}
      load = _moe_load(m["expert_load"], model_cfg.block_size) if "expert_load" in m else {}
      writer.write(offset + step, {"stage": name, "stage_step": step, **scalars, "tokens_per_s": tps, **load})
      row.setdefault("first_loss", scalars["loss"])
      row["last_loss"] = scalars["loss"]
      progress.update(step, scalars["loss"], tps)
    if in_a_row >= tcfg.max_nonfinite_in_a_row:
      ckpt.close()
      raise NonFiniteError(f"stage {name}: {in_a_row} consecutive updates had a non-finite loss or gradient "
                           f"(step {step}); stopping. The last checkpoint holds the state before them.")
    if tcfg.eval_every and step % tcfg.eval_every == 0 and step < tcfg.steps:
      writer.write(offset + step, {"stage": name, **evaluate(state.params)})
    if step == tcfg.steps:
      break
    if step % tcfg.checkpoint_every == 0 or stop["flag"]:
      ckpt.save(step, state, train_it.get_state(), record, force=stop["flag"])
    if stop["flag"]:
      ckpt.close()
      progress.close()
      raise Preempted(f"SIGTERM: saved stage {name} at step {step} in {ckpt.directory}; rerun to resume")
  progress.close()
  row.update(evaluate(state.params))
  writer.write(offset + step, {"stage": name, **{k: v for k, v in row.items() if k.startswith("eval_")
                                                 and not k.endswith("_tokens")}})
  row["seconds"] = time.perf_counter() - t_start
  row["tokens_per_s"] = row["tokens"] / max(row["seconds"], 1e-9)
  row["skipped"] = int(state.nonfinite_total)
  ckpt.save(step, state, train_it.get_state(), {**record, "complete": True, "summary": row}, force=True)
  ckpt.close()
  return state, row


def _distill_update(cfg, model_cfg, tx, mesh, train_it, to_global):
  """The distill stage's update: loads the teacher once (replicated over the mesh), alpha on its schedule."""
  from llama4_jax.generate import load_checkpoint
  teacher_cfg, teacher_params, _ = load_checkpoint(cfg.distill.teacher)
  teacher_cfg = dataclasses.replace(teacher_cfg, moe_impl=model_cfg.moe_impl, attention_impl=model_cfg.attention_impl,
                                    kernel_interpret=model_cfg.kernel_interpret,
                                    moe_capacity_factor=model_cfg.moe_capacity_factor)
  teacher_params = jax.device_put(teacher_params, NamedSharding(mesh, PartitionSpec()))
  d = cfg.distill
  step_fn = jax.jit(functools.partial(distill.distill_step, model_cfg=model_cfg, teacher_cfg=teacher_cfg, tx=tx,
                                      temperature=d.temperature), donate_argnums=0)

  def update(state, step):
    alpha = distill.alpha_at(step, cfg.train.steps, d.alpha_start, d.alpha_end, d.schedule)
    return step_fn(state, to_global(next(train_it)), teacher_params, jnp.float32(alpha))
  return update


def train_and_evaluate(config: ConfigDict, workdir: str) -> list[dict]:
  """Runs every stage; returns the per-stage summary rows (also printed)."""
  stages = resolve_stages(config)
  workdir = os.path.abspath(workdir)
  lock = None
  if jax.process_index() == 0:  # the processes of one multi-host run share the workdir; process 0 holds the lock
    lock = workdir_lock.acquire(workdir)
    try:
      _check_workdir(workdir, _fingerprint(stages))
    except BaseException:
      workdir_lock.release(lock)
      raise
  try:
    return _train_stages(config, stages, workdir)
  finally:
    if lock is not None:
      workdir_lock.release(lock)


def _train_stages(config: ConfigDict, stages, workdir: str) -> list[dict]:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("workdir checked")
  stop = {"flag": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
  writer = MetricsWriter(workdir, tensorboard=config.train.tensorboard, enabled=jax.process_index() == 0)
  rows, state, offset = [], None, 0
  try:
    for name, kind, cfg in stages:
      state, row = run_stage(name, cfg, workdir, state, offset, writer, stop, kind)
      rows.append(row)
      offset += cfg.train.steps
  finally:
    writer.close()
    signal.signal(signal.SIGTERM, previous)
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, SUMMARY), {"complete": True, "stages": rows})
    print(summary(rows, workdir), flush=True)
  return rows


SUMMARY = "summary.json"  # written once every stage has finished: a run without it stopped early (e.g. SIGTERM)


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v))
  os.replace(path + ".tmp", path)
