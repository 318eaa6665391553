"""orbax checkpoints of the whole training state, with fallback past a corrupted newest checkpoint.

A checkpoint holds the TrainState (params, optimizer state, step, skip counters), the data iterator's state and a
small JSON record (stage, seed, config fingerprint). orbax writes each step to a temporary directory and renames it
when complete, so a process killed mid-save leaves no step that looks finished. Saving is asynchronous; the state is
copied first because the train step donates its input buffers.
"""

from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(RuntimeError):
  """The workdir holds checkpoints of an incompatible configuration."""


class Checkpointer:
  def __init__(self, directory: str, keep: int, keep_period: int | None, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, record: dict, force: bool = False) -> None:
    state = jax.tree_util.tree_map(jnp.copy, state)  # detach from buffers the next donated step will reuse
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              record=ocp.args.JsonSave(record))
    self._manager.save(step, args=args, force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state):
    """(step, state, data_state, record) of the newest readable checkpoint, or None when there is none.

    A checkpoint that fails to restore (truncated, corrupted) is reported, moved to `<dir>/corrupt/` so it is never
    read or overwritten again, and the previous one is tried.
    """
    for step in reversed(self.steps()):
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            record=ocp.args.JsonRestore()))
        return step, out["state"], out["data"], out["record"]
      except Exception as e:  # orbax raises a variety of types for damaged files
        self._quarantine(step, e)
    return None

  def read_record(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]

  def _quarantine(self, step: int, error: Exception) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, "corrupt", f"{step}-{int(time.time())}")
    msg = f"checkpoint {src} is unreadable ({type(error).__name__}: {str(error)[:200]}); moved to {dst}, " \
          "falling back to the previous checkpoint"
    logging.warning(msg)
    print(f"WARNING: {msg}", flush=True)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(src):
      shutil.move(src, dst)
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
