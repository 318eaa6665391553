"""The integration tests run the real commands in subprocesses. Those share the session's persistent XLA compilation
cache (tests/conftest.py: a temporary folder removed when the test session exits), so that a program the smoke runs
repeat (the same train step in every run of a kill / resume / corruption test) is compiled once per session instead
of once per run."""

import os

_XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the session's cache (tests/conftest.py)


def subprocess_env(**overrides) -> dict:
  """This process's environment for a CPU subprocess with the shared compilation cache, plus `overrides`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=_XLA_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.update(overrides)
  return env
