"""The host allocator settings: freed large blocks stay in the process (glibc), bad settings are named."""

import os
import subprocess
import sys

import pytest

from llama4_jax import host_memory

GLIBC = host_memory._glibc() is not None
BLOCK = 256 << 20  # far above glibc's largest mmap threshold (32 MiB)

# Loads host_memory.py by path (no JAX import: a fresh process whose allocator nothing else has touched yet), applies
# it, then mallocs BLOCK bytes, touches them and frees them; prints how much the resident set fell at the free.
_PROBE = f"""
import ctypes, importlib.util, os
spec = importlib.util.spec_from_file_location("hm", {host_memory.__file__!r})
hm = importlib.util.module_from_spec(spec); spec.loader.exec_module(hm)
print(hm.retain_freed_host_memory(state_bytes=int(os.environ["PROBE_STATE_BYTES"] or 0) or None))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t]; libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
p = libc.malloc({BLOCK}); ctypes.memset(p, 1, {BLOCK}); before = rss(); libc.free(p)
print(before - rss())
"""


def _probe(mode: str | None, state_bytes: int | None = None) -> tuple[str, int]:
  env = dict(os.environ, **{host_memory.ENV_VAR: mode or ""}, PROBE_STATE_BYTES=str(state_bytes or ""))
  if mode is None:
    del env[host_memory.ENV_VAR]  # what the entry points see when nobody sets it
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True, timeout=60)
  applied, released = out.stdout.strip().splitlines()
  return applied, int(released)


@pytest.mark.skipif(not GLIBC, reason="the settings apply to glibc only")
def test_retain_keeps_a_freed_large_block_resident():
  applied, released = _probe("retain")
  assert applied == "{'arena_max': 1, 'mmap_max': 0, 'trim_threshold': 2147483647}"
  assert released < BLOCK // 8, released  # kept for the next step's buffers


@pytest.mark.skipif(not GLIBC, reason="the settings apply to glibc only")
def test_system_mode_leaves_glibc_defaults():
  applied, released = _probe("system")
  assert applied == "None"
  assert released > BLOCK // 2, released  # the default: the block was an mmap, unmapped at free


@pytest.mark.skipif(not GLIBC, reason="the settings apply to glibc only")
def test_unset_mode_means_retain():
  applied, released = _probe(None)
  assert applied.startswith("{'arena_max': 1")
  assert released < BLOCK // 8, released


def test_bad_mode_is_named():
  with pytest.raises(ValueError, match="LLAMA4_JAX_HOST_MALLOC='keep-all'"):
    host_memory.retain_freed_host_memory(environ={host_memory.ENV_VAR: "keep-all"})


@pytest.mark.parametrize("threshold", [0, 2**31])
def test_bad_threshold_is_named(threshold):
  with pytest.raises(ValueError, match=f"trim_threshold_bytes={threshold}"):
    host_memory.retain_freed_host_memory(threshold, environ={})


def test_system_mode_changes_nothing():
  assert host_memory.retain_freed_host_memory(environ={host_memory.ENV_VAR: " System "}) is None


@pytest.mark.skipif(not GLIBC or not host_memory.physical_memory_bytes(), reason="glibc and a known memory size")
def test_a_large_training_state_keeps_the_defaults_unless_retain_is_set():
  """One arena without mmap grows past the defaults' peak (the `small` preset was killed at 24 GiB): a training state
  above RETAIN_MAX_FRACTION of memory keeps the defaults, a small one gets the settings, an explicit retain wins."""
  large = int(host_memory.physical_memory_bytes() * host_memory.RETAIN_MAX_FRACTION) + 1
  applied, released = _probe(None, large)
  assert applied == "None" and released > BLOCK // 2, (applied, released)
  applied, released = _probe(None, 1 << 20)
  assert applied.startswith("{'arena_max': 1") and released < BLOCK // 8, (applied, released)
  applied, released = _probe("retain", large)
  assert applied.startswith("{'arena_max': 1") and released < BLOCK // 8, (applied, released)


def test_applied_mode_says_why_the_defaults_were_kept():
  large = int((host_memory.physical_memory_bytes() or 1 << 40) * host_memory.RETAIN_MAX_FRACTION) + (1 << 30)
  if host_memory.physical_memory_bytes():
    assert host_memory.retain_freed_host_memory(environ={}, state_bytes=large) is None
    assert host_memory.applied_mode().startswith("system (training state ")
  assert host_memory.retain_freed_host_memory(environ={host_memory.ENV_VAR: "system"}) is None
  assert host_memory.applied_mode() == "system"


def test_training_state_bytes_counts_sixteen_bytes_per_parameter():
  from configs import base
  from llama4_jax import param_count
  from llama4_jax.config import model_config
  cfg = model_config(base.get_config("small"))
  assert host_memory.training_state_bytes(cfg) == 16 * param_count.count(cfg)["total"] > 8 << 30
