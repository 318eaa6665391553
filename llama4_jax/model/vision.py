"""Llama 4's vision tower: per-tile ViT encoder, pixel shuffle, adapter MLP and the projector into the text width.

Per tile (spec section 5): patches [P, C*p*p] -> linear (no bias) -> CLS appended *last* -> learned positions ->
pre-LayerNorm -> pre-LN blocks (biased MHA with 2D RoPE, exact-GELU MLP) -> post-LayerNorm -> CLS dropped -> pixel
shuffle (P tokens of width D -> P*r^2 tokens of width D/r^2) -> adapter fc1, GELU, fc2, GELU -> projector.
Tiles are encoded independently (no cross-tile attention). Parameters live under params['vision'] with the encoder
layers stacked on a leading [num_hidden_layers] axis (one scan, one compile regardless of depth).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ModelConfig, VisionConfig
from llama4_jax.model.layers import declare
from llama4_jax.model.rope import apply_rope
from llama4_jax.ops.attention import dot_product_attention


def patchify(pixels_NCHW, patch: int):
  """[N, C, H, W] -> [N, (H/p)*(W/p), C*p*p]: row-major patches, each flattened as (channel, row, col) like the
  stride-p convolution whose weight the checkpoint stores as a [D, C*p*p] linear map."""
  n, c, h, w = pixels_NCHW.shape
  x = pixels_NCHW.reshape(n, c, h // patch, patch, w // patch, patch)
  return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def pixel_shuffle(x_NPD, ratio: float):
  """Space-to-depth over the square patch grid: s x s neighbours (s = 1/ratio) become one token.

  Input token y*g + x; output token (y//s)*(g/s) + x//s with channel (y%s)*s*D + (x%s)*D + c (spec 5.6).
  """
  n, p, d = x_NPD.shape
  g, s = int(round(p ** 0.5)), int(round(1 / ratio))
  x = x_NPD.reshape(n, g // s, s, g // s, s, d)  # [n, y2, ymod, x2, xmod, d]
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (g // s) ** 2, s * s * d)


def vision_rope_tables(vcfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
  """cos, sin [P + 1, K/2] float32 for the 2D RoPE of one tile (CLS last, angle 0).

  Pair j < K/4 rotates by X * f_j and pair j >= K/4 by Y * f_(j - K/4), with 1-based patch column X and row Y and
  f_j = theta^(-4j/K) (spec 5.5).
  """
  g = vcfg.image_size // vcfg.patch_size
  k = vcfg.hidden_size // vcfg.num_attention_heads
  quarter = k // 4
  freqs = (1.0 / (np.float32(vcfg.rope_theta) ** (np.arange(0, k // 2, 2, dtype=np.float32)[:quarter]
                                                  / np.float32(k // 2)))).astype(np.float32)
  index = np.arange(g * g)
  cols, rows = (index % g + 1).astype(np.float32), (index // g + 1).astype(np.float32)
  angles = np.concatenate([cols[:, None] * freqs[None], rows[:, None] * freqs[None]], axis=1)
  angles = np.concatenate([angles, np.zeros((1, 2 * quarter), np.float32)], axis=0).astype(np.float32)
  return np.cos(angles), np.sin(angles)


def gelu(x):
  return jax.nn.gelu(x, approximate=False)  # exact erf GELU everywhere in the vision tower


class LayerNorm(nn.Module):
  """Standard LayerNorm with weight and bias, statistics in float32."""

  cfg: ModelConfig
  eps: float

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = declare(self, "scale", (d,), ("norm",), self.cfg, nn.initializers.ones)
    bias = declare(self, "bias", (d,), ("norm",), self.cfg, nn.initializers.zeros)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _linear(module, name, shape, axes, cfg, x, spec, n_in=1):
  """x @ W + b with W of `shape` (input-major: `n_in` input dims first) and a bias over the output dims."""
  w = declare(module, name, shape, axes, cfg).astype(x.dtype)
  b = declare(module, f"{name}_bias", shape[n_in:], axes[n_in:], cfg, nn.initializers.zeros).astype(x.dtype)
  return jnp.einsum(spec, x, w) + b


class VisionLayer(nn.Module):
  """Pre-LN block: x += o(MHA(LN1(x))) with 2D RoPE on q and k; x += fc2(GELU(fc1(LN2(x))))."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_NLD, cos_sin):
    cfg, v = self.cfg, self.cfg.vision
    d, h = v.hidden_size, v.num_attention_heads
    k = d // h
    y = LayerNorm(cfg, v.norm_eps, name="attn_norm")(x_NLD)
    q = _linear(self, "q", (d, h, k), ("embed", "heads", "head_dim"), cfg, y, "nld,dhk->nlhk")
    kk = _linear(self, "k", (d, h, k), ("embed", "heads", "head_dim"), cfg, y, "nld,dhk->nlhk")
    vv = _linear(self, "v", (d, h, k), ("embed", "heads", "head_dim"), cfg, y, "nld,dhk->nlhk")
    cos, sin = cos_sin
    q, kk = apply_rope(q, cos[None], sin[None]), apply_rope(kk, cos[None], sin[None])
    n, l = x_NLD.shape[:2]
    everything = jnp.ones((1, l, l), bool)  # bidirectional inside the tile
    out = dot_product_attention(q, kk, vv, everything, scale=k ** -0.5)
    x_NLD = x_NLD + _linear(self, "o", (h, k, d), ("heads", "head_dim", "embed"), cfg, out, "nlhk,hkd->nld",
                            n_in=2)
    y = LayerNorm(cfg, v.norm_eps, name="mlp_norm")(x_NLD)
    y = gelu(_linear(self, "fc1", (d, v.intermediate_size), ("embed", "mlp"), cfg, y, "nld,df->nlf"))
    return x_NLD + _linear(self, "fc2", (v.intermediate_size, d), ("mlp", "embed"), cfg, y, "nlf,fd->nld"), None


class VisionEncoder(nn.Module):
  """pixels [N, C, S, S] (normalised tiles) -> image features [N, P*r^2, text hidden] in text embedding space."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, pixels_NCHW):
    cfg, v = self.cfg, self.cfg.vision
    d, dt = v.hidden_size, jnp.dtype(cfg.dtype)
    patches = patchify(pixels_NCHW.astype(dt), v.patch_size)
    n, p, _ = patches.shape
    w_patch = declare(self, "patch_embed", (patches.shape[-1], d), (None, "embed"), cfg).astype(dt)
    std = nn.initializers.normal(stddev=d ** -0.5)
    cls = declare(self, "class_embedding", (d,), ("embed",), cfg, std).astype(dt)
    pos = declare(self, "position_embedding", (p + 1, d), (None, "embed"), cfg, std).astype(dt)
    x = jnp.concatenate([patches @ w_patch, jnp.broadcast_to(cls, (n, 1, d))], axis=1) + pos
    x = LayerNorm(cfg, v.norm_eps, name="pre_norm")(x)
    cos, sin = vision_rope_tables(v)
    layers = nn.scan(VisionLayer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                     length=v.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="layers")
    x, _ = layers(x, (jnp.asarray(cos), jnp.asarray(sin)))
    x = LayerNorm(cfg, v.norm_eps, name="post_norm")(x)[:, :-1]  # the CLS token is not an image feature
    x = pixel_shuffle(x, v.pixel_shuffle_ratio)
    fc1 = declare(self, "adapter_fc1", (x.shape[-1], v.projector_input_dim), ("mlp", "embed"), cfg).astype(dt)
    fc2 = declare(self, "adapter_fc2", (v.projector_input_dim, v.projector_output_dim), ("embed", "mlp"),
                  cfg).astype(dt)
    x = gelu(gelu(x @ fc1) @ fc2)  # the adapter applies GELU after both layers (spec 9.11)
    proj = declare(self, "projector", (v.vision_output_dim, cfg.hidden_size), ("mlp", "embed"), cfg).astype(dt)
    return x @ proj


def merge_image_features(x_BLD, tokens_BL, features_BMD, image_token_id: int):
  """Early fusion: the m-th `<|patch|>` token of row b takes features_BMD[b, m]; every other token keeps x.

  Rows must hold exactly as many `<|patch|>` tokens as they have valid features (checked on the host before the
  call, see `llama4_jax.model.images_for_rows`); inside jit the index is only clipped.
  """
  mask_BL = tokens_BL == image_token_id
  index_BL = jnp.clip(jnp.cumsum(mask_BL, axis=1) - 1, 0, features_BMD.shape[1] - 1)
  picked_BLD = jnp.take_along_axis(features_BMD, index_BL[..., None], axis=1)
  return jnp.where(mask_BL[..., None], picked_BLD.astype(x_BLD.dtype), x_BLD)
