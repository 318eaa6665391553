"""Test session setup: 8 simulated CPU devices before JAX starts, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The suite keeps glibc's allocator defaults (LLAMA4_JAX_HOST_MALLOC=system, inherited by the processes it starts).
# With the entry points' `retain` settings (one arena, no mmap) every fresh-clone run of the whole suite in one
# process crashed inside an XLA:CPU compile after 30+ minutes and ~650 tests (segfault / abort, three runs, at
# different tests that each pass alone), while the suite ran clean before they were applied to it. tests/unit/
# test_host_memory.py checks the settings themselves in fresh processes.
os.environ.setdefault("LLAMA4_JAX_HOST_MALLOC", "system")

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


@pytest.fixture
def tiny_cfg():
  return tiny_config()


@pytest.fixture
def rng():
  return jax.random.key(0)
