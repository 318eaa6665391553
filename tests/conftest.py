"""Test session setup: 8 simulated CPU devices before JAX starts, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The suite is mostly compiles of small programs: XLA:CPU's LLVM backend at optimisation level 0 compiles them much
# faster (the HLO passes and the matmul libraries are the same; an elementwise loop runs slower). Set another
# --xla_backend_optimization_level in XLA_FLAGS to override.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA compilation cache for the whole session: every xdist worker, every test module (each module's
# programs are dropped from memory after it, see below) and the integration tests' subprocesses
# (tests/integration/__init__.py). The process that creates the folder (pytest's main process; the workers inherit
# the variable) removes it when it exits.
CACHE_ENV = "LLAMA4_JAX_TESTS_XLA_CACHE"
if CACHE_ENV not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="llama4_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, os.environ[CACHE_ENV], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_ENV]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program (JAX's default: >= 1 s only)

from llama4_jax.host_memory import retain_freed_host_memory  # noqa: E402

retain_freed_host_memory()  # as the entry points do, before the CPU backend starts: faster steps, faster suite

import jax  # noqa: E402
import pytest  # noqa: E402

from llama4_jax.config import ModelConfig, RopeScaling  # noqa: E402


def tiny_config(**overrides) -> ModelConfig:
  """A few-thousand-parameter model exercising every layer kind (RoPE+chunk, NoPE, dense, MoE)."""
  base = dict(vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              head_dim=8, intermediate_size=16, intermediate_size_mlp=24, num_local_experts=4, num_experts_per_tok=1,
              interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=8, floor_scale=4,
              rope_theta=10000.0, rope_scaling=RopeScaling("llama3", 16.0, 1.0, 1.0, 64), initializer_range=0.1,
              max_position_embeddings=4096)
  base.update(overrides)
  return ModelConfig(**base)


MAX_WORKERS = 4  # each worker holds its own compiled programs and JAX buffers (a few GiB at the suite's peak)


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pyproject.toml): one worker per core, at most MAX_WORKERS. The suite is mostly XLA compiles, which
  run on one thread, so a second worker on the 2-core CI machine cut a compile-bound sample of it from 112 s to
  73 s (tests/unit/test_moe.py, test_attention.py, test_rope.py, 2026-12-06)."""
  del config
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return max(1, min(MAX_WORKERS, cores))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops every compiled program after each test module. Each XLA:CPU executable keeps a few memory mappings of its
  code (about 3.4 per small program, measured), and the kernel allows 65,530 per process (vm.max_map_count): one
  process compiling the whole suite's programs ran out of them late in the run, and XLA's compiler then aborted or
  segfaulted inside whichever test compiled next (four fresh-clone runs, 2026-11-28). Programs shared by the tests
  of one module stay compiled."""
  yield
  jax.clear_caches()


@pytest.fixture
def tiny_cfg():
  return tiny_config()


@pytest.fixture
def rng():
  return jax.random.key(0)
