"""Metrics sinks: `<workdir>/metrics.jsonl` (one JSON object per logged step) and TensorBoard event files.

On resume the JSONL file is rewritten without the entries past the restored step, so it always describes one
consistent run (rewritten to a temporary file and renamed).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def _plain(value):
  if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "dtype"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricsWriter:
  """metrics.jsonl (+ TensorBoard). With several processes only the first one writes (`enabled=False` elsewhere)."""

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._tb = None
    if tensorboard and enabled:
      from tensorboardX import SummaryWriter  # writes TensorBoard event files without TensorFlow's summary ops
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def truncate_after(self, step: int) -> None:
    """Drops records with step > `step` (work lost since the last checkpoint will be redone)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue  # a line cut short by a kill
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
