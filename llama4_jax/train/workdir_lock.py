"""One training process per workdir: an exclusive advisory lock (flock) on `<workdir>/.lock`.

Two processes training into one workdir interleave their metrics.jsonl lines and overwrite each other's checkpoints
(two sweep processes over one sweep directory did this). The training loop takes the lock before any work and holds
it for its lifetime; the kernel releases it when the process ends, however it ends, so a killed run never leaves a
stale lock. The sweep runner checks it to skip a run another process is training.
"""

from __future__ import annotations

import fcntl
import os

LOCK = ".lock"


class WorkdirInUseError(RuntimeError):
  """Another process holds the workdir's lock."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip() or "unknown"
  except OSError:
    return "unknown"


def acquire(workdir: str):
  """Locks `workdir` (created if missing) for this process; returns the open lock file (keep it; `release` it)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  handle = open(path, "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise WorkdirInUseError(f"workdir {workdir} is in use by another training process (pid {_holder(path)}); "
                            "wait for it to finish, stop it, or use another --workdir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(str(os.getpid()))
  handle.flush()
  return handle


def release(handle) -> None:
  fcntl.flock(handle, fcntl.LOCK_UN)
  handle.close()


def in_use(workdir: str) -> bool:
  """True while some process holds `workdir`'s lock (checked without taking it for longer than the check)."""
  path = os.path.join(workdir, LOCK)
  if not os.path.exists(path):
    return False
  with open(path, "a+") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(handle, fcntl.LOCK_UN)
  return False
