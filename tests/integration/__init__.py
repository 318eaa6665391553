"""The integration tests run the real commands in subprocesses. Those inherit the session's persistent XLA
compilation cache (tests/conftest.py sets JAX_COMPILATION_CACHE_DIR: a temporary folder removed when the test
session exits), so that a program the smoke runs repeat (the same train step in every run of a kill / resume /
corruption test) is compiled once per session instead of once per run."""

import os


def subprocess_env(**overrides) -> dict:
  """This process's environment (with the session's compilation cache) for a CPU subprocess run with the default
  XLA flags (one device, the LLVM level users get), plus `overrides`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.update(overrides)
  return env
