"""Console output: a one-line progress bar (step, loss, tokens/s, ETA) and the end-of-run summary."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Redraws one line on a terminal; prints a line per update otherwise (logs, CI)."""

  def __init__(self, stage: str, start_step: int, total_steps: int, enabled: bool = True, stream=None):
    self.stage, self.total, self.enabled = stage, total_steps, enabled
    self.stream = stream or sys.stdout
    self.tty = self.stream.isatty()
    self._t0, self._s0 = time.perf_counter(), start_step

  def update(self, step: int, loss: float, tokens_per_s: float) -> None:
    if not self.enabled:
      return
    done = (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)
    eta = (self.total - step) / done if done > 0 else 0.0
    width = 24
    filled = int(width * step / max(self.total, 1))
    bar = "#" * filled + "-" * (width - filled)
    line = (f"[{self.stage}] [{bar}] step {step}/{self.total} | loss {loss:.4f} | "
            f"{tokens_per_s:,.0f} tok/s | ETA {_duration(eta)}")
    if self.tty:
      self.stream.write("\r" + line.ljust(100))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()


def summary(rows: list[dict], workdir: str) -> str:
  """One screen: per stage the steps, losses, eval perplexity, throughput and skipped updates."""
  head = f"{'stage':<12}{'steps':>8}{'first loss':>12}{'last loss':>11}{'eval loss':>11}{'eval ppl':>10}" \
         f"{'tokens':>12}{'tok/s':>9}{'time':>10}{'skipped':>9}"
  lines = ["", "=" * len(head), "Run summary", "-" * len(head), head]
  for r in rows:
    lines.append(f"{r['stage']:<12}{r['steps']:>8}{r.get('first_loss', float('nan')):>12.4f}"
                 f"{r.get('last_loss', float('nan')):>11.4f}{r.get('eval_loss', float('nan')):>11.4f}"
                 f" {r.get('eval_perplexity', float('nan')):>9.6g}{r.get('tokens', 0):>12,}"
                 f"{r.get('tokens_per_s', 0.0):>9,.0f}{_duration(r.get('seconds', 0.0)):>10}{r.get('skipped', 0):>9}")
  image_rows = [r for r in rows if "eval_image_answer_loss" in r]
  if image_rows:  # vision models: does the model read the image? (held-out questions, answer tokens only)
    lines += ["-" * len(head), "held-out image questions, answer loss:   with the image   with a blank image"]
    lines += [f"  {r['stage']:<38}{r['eval_image_answer_loss']:>15.4f}{r['eval_blank_image_answer_loss']:>20.4f}"
              for r in image_rows]
  lines += ["-" * len(head), f"workdir: {workdir}  (metrics.jsonl, tensorboard/, checkpoints/)", "=" * len(head)]
  return "\n".join(lines)
