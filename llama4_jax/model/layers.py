"""Small building blocks: parameter declaration with logical axes, RMSNorm, SwiGLU MLP."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from llama4_jax.config import ModelConfig
from llama4_jax.ops.linear import linear
from llama4_jax.ops.moe import swiglu


def dtype_of(name: str):
  return jnp.dtype(name)


def declare(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str | None], cfg: ModelConfig,
            init=None):
  """Declares a parameter with its logical axis names next to its shape and initializer, once."""
  init = init or nn.initializers.normal(stddev=cfg.initializer_range)
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      dtype_of(cfg.param_dtype))


def rms_normalize(x, eps: float):
  """Weightless RMS normalisation in float32, cast back to x's dtype (also the qk-norm)."""
  xf = x.astype(jnp.float32)
  return (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RMSNorm(nn.Module):
  """Normalise in fp32, cast back to the activation dtype, then multiply by the weight (Llama 4 order)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    scale = declare(self, "scale", (x_BLD.shape[-1],), ("norm",), self.cfg, nn.initializers.ones)
    return rms_normalize(x_BLD, self.cfg.rms_norm_eps) * scale.astype(x_BLD.dtype)


class MLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases."""

  cfg: ModelConfig
  width: int
  axis: str = "mlp"

  @nn.compact
  def __call__(self, x_BLD):
    cfg, d = self.cfg, x_BLD.shape[-1]
    # gate and up stored together ([D, 2, F]): one matmul, and on CPU a much cheaper backward than two.
    gate_up = declare(self, "gate_up", (d, 2, self.width), ("embed", None, self.axis), cfg).astype(x_BLD.dtype)
    down = declare(self, "down", (self.width, d), (self.axis, "embed"), cfg).astype(x_BLD.dtype)
    return linear(swiglu(linear(x_BLD, gate_up)), down)
