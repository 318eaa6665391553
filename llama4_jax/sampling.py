"""Next-token sampling: greedy, temperature, top-k, top-p (nucleus), seeded; pure functions over logits [B, V]."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How `generate` picks tokens. temperature 0 is greedy (argmax); top_k 0 and top_p 1 disable those filters.

  `stop_tokens`: ids or special-token names ('<|eot|>') that end a row; None means the Llama 4 stop set
  (`<|end_of_text|>`, `<|eom|>`, `<|eot|>`) of the tokenizer, or the model's eos id without one.
  Meta's chat defaults are temperature 0.6, top_p 0.9.
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop_tokens: tuple | None = None

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"sampling.top_k must be a non-negative integer, got {self.top_k!r}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"sampling.top_p must lie in (0, 1], got {self.top_p}")


def filter_logits(logits_BV, top_k: int, top_p: float):
  """Masks (to the float32 minimum) every token outside the top-k and outside the smallest top-p nucleus."""
  logits_BV = logits_BV.astype(jnp.float32)
  if top_k:
    kth = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth, _NEG, logits_BV)
  if top_p < 1.0:
    order = jnp.argsort(-logits_BV, axis=-1)
    sorted_BV = jnp.take_along_axis(logits_BV, order, axis=-1)
    probs = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep a token if the mass strictly before it is below top_p (so the top token always survives).
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(order.shape[0])[:, None], order].set(keep_sorted)
    logits_BV = jnp.where(keep, logits_BV, _NEG)
  return logits_BV


def sample(logits_BV, key, sampling: Sampling):
  """Next token per row, int32 [B]."""
  if sampling.temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  scaled = logits_BV.astype(jnp.float32) / sampling.temperature
  return jax.random.categorical(key, filter_logits(scaled, sampling.top_k, sampling.top_p)).astype(jnp.int32)
