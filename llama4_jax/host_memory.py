"""Host allocator settings for XLA:CPU runs: keep freed memory in the process instead of handing it back.

XLA:CPU allocates each step's buffers anew (gradients, optimizer moments, logits, scan residuals) with the C
allocator. glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh `mmap` and unmaps it
on free, so each step page-faults its large buffers in again: on the project's 2-core machine a 200 MB elementwise op
into a fresh buffer ran at about 4.5 GB/s against 13-35 GB/s into recycled memory, and the tiny preset's fp32 train
step took 1.15-1.39 s with the default allocator against 0.96-1.07 s with the settings below (benchmarks/RESULTS.md,
"Issue 8, fourth pass").

`retain_freed_host_memory()` tells glibc (through `mallopt`) to serve large blocks from its heap (no mmap), to keep up
to `trim_threshold_bytes` of freed memory instead of returning it, and to use one arena (per-thread arenas are small
mmapped heaps that cannot hold these blocks). Memory is then reused from step to step; the process's resident size
stays near its peak instead of falling between steps. It must run before JAX starts its CPU backend (the first
array or `jax.devices()`): the entry points and benchmarks call it first thing, and `tests/conftest.py` too.
Set LLAMA4_JAX_HOST_MALLOC=system to keep the C library's defaults. Other C libraries (macOS, musl) are left alone.

The cost is memory: one arena with mmap off cannot hand back the holes between live blocks, so the heap grows past
the peak the defaults need. Where a run's training state is a large share of the machine (an entry point passes
`state_bytes`), the defaults are kept unless LLAMA4_JAX_HOST_MALLOC=retain is set explicitly: the `small` preset's
train step (0.5B parameters, 8 GB of state) was killed at 24 GiB with the settings and peaked at 17.3 GB without them,
at the same step time.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "LLAMA4_JAX_HOST_MALLOC"
MODES = ("retain", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

# A training state above this share of physical memory keeps the C library's defaults (unless retain is asked for).
RETAIN_MAX_FRACTION = 0.125
STATE_BYTES_PER_PARAM = 16  # float32 parameters, gradients and two Adam moments

_applied = {"mode": None}


def _glibc():
  """The running glibc as a ctypes library, or None on other platforms or C libraries."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    if not os.confstr("CS_GNU_LIBC_VERSION"):
      return None
  except (ValueError, OSError):
    return None
  libc = ctypes.CDLL(None)
  return libc if hasattr(libc, "mallopt") else None


def physical_memory_bytes() -> int | None:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return None


def retain_freed_host_memory(trim_threshold_bytes: int = _INT_MAX, environ=None,
                             state_bytes: int | None = None) -> dict[str, int] | None:
  """Applies the settings above; returns them, or None where nothing was changed (other libc, mode `system`, or a
  `state_bytes` above RETAIN_MAX_FRACTION of physical memory without an explicit LLAMA4_JAX_HOST_MALLOC=retain).

  Raises ValueError for an unknown LLAMA4_JAX_HOST_MALLOC value or a threshold mallopt cannot take (an int > 0).
  """
  environ = os.environ if environ is None else environ
  mode = requested_mode(environ)
  if mode not in MODES:
    raise ValueError(f"{ENV_VAR}={environ[ENV_VAR]!r}: expected one of {', '.join(MODES)}")
  if not 0 < trim_threshold_bytes <= _INT_MAX:
    raise ValueError(f"trim_threshold_bytes={trim_threshold_bytes}: must be in 1..{_INT_MAX} (a C int)")
  memory = physical_memory_bytes()
  if (mode == "retain" and not environ.get(ENV_VAR, "").strip() and state_bytes is not None and memory
      and state_bytes > RETAIN_MAX_FRACTION * memory):
    _applied["mode"] = (f"system (training state {state_bytes / 2**30:.1f} GiB > {RETAIN_MAX_FRACTION:g} of "
                        f"{memory / 2**30:.1f} GiB memory)")
    return None
  libc = None if mode == "system" else _glibc()
  if libc is None:
    _applied["mode"] = "system"
    return None
  settings = {"arena_max": (_M_ARENA_MAX, 1), "mmap_max": (_M_MMAP_MAX, 0),
              "trim_threshold": (_M_TRIM_THRESHOLD, trim_threshold_bytes)}
  for name, (param, value) in settings.items():
    if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
      raise OSError(f"mallopt({name}={value}) was refused by the C library")
  _applied["mode"] = "retain"
  return {name: value for name, (_, value) in settings.items()}


def training_state_bytes(model_cfg) -> int:
  """A model config's float32 training state (parameters, gradients, two Adam moments), for `state_bytes`. Counted
  from the config alone: a JAX call here would start the backend (and, multi-process, before jax.distributed)."""
  from llama4_jax import param_count  # imports JAX, which starts nothing
  params = param_count.text_param_count(model_cfg)
  params += param_count.vision_param_count(model_cfg.vision, model_cfg.hidden_size)
  return STATE_BYTES_PER_PARAM * params


def applied_mode(environ=None) -> str:
  """What `retain_freed_host_memory` did in this process ('retain', 'system' or why the defaults were kept), or
  the requested mode where it has not run; for benchmarks to record next to their numbers."""
  return _applied["mode"] or requested_mode(environ)


def requested_mode(environ=None) -> str:
  """What LLAMA4_JAX_HOST_MALLOC asks for ('retain' unless set), for benchmarks to record next to their numbers."""
  environ = os.environ if environ is None else environ
  return environ.get(ENV_VAR, "retain").strip().lower() or "retain"
