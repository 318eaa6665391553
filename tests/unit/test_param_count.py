"""Parameter counts of the presets against the published / derived figures (spec 1.1), computed without allocation."""

import resource
import time

import pytest

from configs import models
from configs import base
from llama4_jax.config import from_config_dict, model_config
from llama4_jax.param_count import count, text_param_count


def _count(name):
  return count(from_config_dict(models.PRESETS[name]()))


def test_tiny_matches_peer_config():
  c = _count("tiny")
  assert c["total"] == 20_984_064
  assert c["vision_total"] == 0 and c["text_total"] == c["total"]


def test_scout():
  c = _count("scout")
  assert c["total"] == 108_641_793_536
  assert c["text_total"] == 107_769_861_120
  assert c["vision_total"] == 871_932_416  # spec 5.1: 0.872B vision tower + projector
  # The model's declared vision parameters agree with the closed form from Hugging Face's module shapes.
  from llama4_jax.param_count import vision_param_count
  cfg = model_config(base.get_config("scout"))
  assert vision_param_count(cfg.vision, cfg.hidden_size) == c["vision_total"]
  assert c["active_text"] == 17_172_894_720


def test_maverick():
  c = _count("maverick")
  assert c["total"] == 401_583_781_376
  assert c["active_text"] == 17_184_691_200


def test_active_count_subtracts_idle_experts_only():
  cfg = from_config_dict(models.maverick())
  c = count(cfg)
  per_expert = 3 * cfg.hidden_size * cfg.intermediate_size
  assert c["routed_experts"] == 24 * 128 * per_expert  # 24 MoE layers (odd indices)
  assert c["text_total"] - c["active_text"] == 24 * 127 * per_expert


def test_behemoth_within_5_percent_of_published_figures():
  c = _count("behemoth")
  assert c["active_text"] == pytest.approx(288e9, rel=0.05)
  assert c["total"] == pytest.approx(2e12, rel=0.05)


def test_counting_allocates_nothing():
  # Behemoth's parameters would take ~8 TB in float32: counting must only trace shapes.
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, a high-water mark
  start = time.perf_counter()
  c = _count("behemoth")
  elapsed = time.perf_counter() - start
  grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
  assert c["total"] > 1e12
  assert grown_mib < 512, f"peak RSS grew by {grown_mib:.0f} MiB"
  assert elapsed < 10, f"counting took {elapsed:.1f} s"


def test_gpu_1b_is_about_one_billion_active():
  # The GPU benchmark preset (benchmarks/gpu_step.sh): ~1B active outside the embedding table and output head.
  c = _count("gpu_1b")
  assert c["total"] == 3_243_706_368
  assert c["active_text"] - c["embedding"] == 1_006_831_616
  assert c["routed_experts"] == 8 * 8 * 3 * 2048 * 4096  # 8 MoE layers of 8 experts


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_closed_form_text_count_equals_the_traced_one(name):
  """`text_param_count` (no JAX call: the entry points size the host allocator with it before the backend starts)
  equals the count from the model's own parameter shapes, for every preset and an odd layer pattern."""
  cfg = from_config_dict(models.PRESETS[name]())
  assert text_param_count(cfg) == count(cfg)["text_total"]
  tiny = models.tiny()
  tiny.update(dict(num_hidden_layers=12, interleave_moe_layer_step=3, num_local_experts=5))
  odd = from_config_dict(tiny)
  assert text_param_count(odd) == count(odd)["text_total"]
