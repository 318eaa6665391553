"""Model presets as code. Each returns the `config.model` ConfigDict (Hugging Face Llama4TextConfig field names).

Sources for Scout / Maverick: the released config.json files (see shared llama4_spec.md, sections 1.2 and 5.1).
"""

import ml_collections


def _llama3_scaling(enabled: bool, factor=16.0, low=1.0, high=1.0, original=8192):
  """Every RopeScaling field (llama4_jax/config.py), so a stage or a study can switch the kind (`linear`, `ntk`,
  `dynamic`, `yarn`) by overriding `model.rope_scaling.*`."""
  return ml_collections.ConfigDict(dict(rope_type="llama3" if enabled else "default", factor=factor,
                                        low_freq_factor=low, high_freq_factor=high,
                                        original_max_position_embeddings=original, beta_fast=32.0, beta_slow=1.0,
                                        attention_factor=None, truncate=True))


def _vision(enabled: bool):
  """Llama 4 vision tower (MetaCLIP-style ViT-H/14 at 336 px) + projector, as released with Scout and Maverick."""
  return ml_collections.ConfigDict(dict(
      enabled=enabled, hidden_size=1408, num_hidden_layers=34, num_attention_heads=16, intermediate_size=5632,
      image_size=336, patch_size=14, num_channels=3, pixel_shuffle_ratio=0.5, projector_input_dim=4096,
      projector_output_dim=4096, vision_output_dim=4096, rope_theta=10000.0, norm_eps=1e-5, image_token_id=200092,
      max_num_tiles=16))


def base_model():
  """Every model field with its default (Scout's text values, no vision)."""
  return ml_collections.ConfigDict(dict(
      vocab_size=202048, hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
      head_dim=128, intermediate_size=8192, intermediate_size_mlp=16384, num_local_experts=16, num_experts_per_tok=1,
      interleave_moe_layer_step=1, no_rope_layer_interval=4, attention_chunk_size=8192, use_qk_norm=True,
      attn_temperature_tuning=True, floor_scale=8192.0, attn_scale=0.1, rope_theta=500000.0,
      rope_scaling=_llama3_scaling(False), rms_norm_eps=1e-5, max_position_embeddings=262144,
      initializer_range=0.02, bos_token_id=200000, eos_token_id=200001, pad_token_id=200018,
      dtype="float32", param_dtype="float32", remat_policy="none", scan_unroll=1,
      vision=_vision(False)))


def tiny():
  """21.0M parameters; the peer configuration of shared/anchors.md. Trains on 2 CPU cores in minutes."""
  m = base_model()
  m.update(dict(vocab_size=4096, hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                head_dim=64, intermediate_size=512, intermediate_size_mlp=1024, num_local_experts=8,
                num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=64,
                use_qk_norm=True, attn_temperature_tuning=True, floor_scale=64.0, attn_scale=0.1,
                max_position_embeddings=4096, bos_token_id=3840, eos_token_id=3841, pad_token_id=3858,
                scan_unroll=0))  # auto: both super-blocks unrolled at depth 8 (no loop), one per iteration deeper
  m.rope_scaling = _llama3_scaling(True)
  return m


def tiny_vl():
  """The tiny text model with a small vision tower: 32 px tiles of 4 px patches (16 image tokens per tile after
  the pixel shuffle), up to 4 tiles + a global tile per image. Trains on the embedded image set on 2 CPU cores."""
  m = tiny()
  m.vision = _vision(True)
  m.vision.update(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                       image_size=32, patch_size=4, projector_input_dim=128, projector_output_dim=128,
                       vision_output_dim=128, image_token_id=3840 + 92, max_num_tiles=4))
  return m


def small():
  """~0.5B total: 16 layers of width 768, 16 experts; for single-accelerator ablations."""
  m = base_model()
  m.update(dict(vocab_size=32768, hidden_size=768, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=4, head_dim=64, intermediate_size=1536, intermediate_size_mlp=3072,
                num_local_experts=16, num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=1024,
                max_position_embeddings=16384, floor_scale=1024.0, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                scan_unroll=0))  # auto: its four super-blocks unrolled (no loop: no stacked residuals to copy)
  m.rope_scaling = _llama3_scaling(True, original=2048)
  return m


def gpu_1b():
  """~1B active: the single-GPU bf16 training benchmark (issue 8's GPU check, benchmarks/gpu_step.sh).

  1.0B active parameters outside the embedding table (1.4B with the 0.41B output head; 3.2B total). Width 2048,
  16 layers (8 dense with 8192-wide SwiGLU, 8 MoE with 8 experts of 4096 plus a shared one, top-1), 16 query heads
  of 128 over 8 KV heads, Llama 4's vocabulary and 8192-token attention chunks, bf16 compute over fp32 parameters.
  CHOSEN dimensions (not a released model), sized so that a step at 2 x 8192 tokens with its fp32 AdamW state fits
  one H200 without rematerialisation.
  """
  m = base_model()
  m.update(dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                intermediate_size=4096, intermediate_size_mlp=8192, num_local_experts=8, num_experts_per_tok=1,
                interleave_moe_layer_step=2, attention_chunk_size=8192, floor_scale=8192.0,
                max_position_embeddings=65536, dtype="bfloat16"))
  m.rope_scaling = _llama3_scaling(True)
  return m


def scout():
  """Llama 4 Scout 17B-16E: 108.6B total (text 107.77B + vision 0.87B), 17.17B active."""
  m = base_model()
  m.rope_scaling = _llama3_scaling(True)  # (16, 1, 1, 8192): the values after llama-models PR #322
  m.vision = _vision(True)
  return m


def maverick():
  """Llama 4 Maverick 17B-128E: 401.6B total, 17.19B active; dense/MoE interleaved, no qk-norm, no rope scaling."""
  m = base_model()
  m.update(dict(num_local_experts=128, interleave_moe_layer_step=2, use_qk_norm=False,
                max_position_embeddings=1048576))
  m.vision = _vision(True)
  return m


def behemoth():
  """Behemoth-class: 288B active, 16 experts, about 2T total. CHOSEN dimensions, not Meta's.

  Meta published only the active/total counts and the expert count. Chosen here: width 16384 with 128 query heads
  of 128 and 8 KV heads, 104 layers (all MoE, NoPE every 4th), experts (and shared expert) of width 22016 (43 x 512), so that
  a routed plus the shared expert form the active FFN. This gives 291.1B active (+1.1% of 288B) and 1.980T total
  including the 0.92B vision tower (-1.0% of 2T); tests/unit/test_param_count.py holds both within 5%.
  """
  m = base_model()
  m.update(dict(hidden_size=16384, num_hidden_layers=104, num_attention_heads=128, num_key_value_heads=8,
                head_dim=128, intermediate_size=22016, intermediate_size_mlp=44032, num_local_experts=16,
                interleave_moe_layer_step=1))
  m.rope_scaling = _llama3_scaling(True)
  m.vision = _vision(True)
  return m


PRESETS = {"tiny": tiny, "tiny_vl": tiny_vl, "small": small, "gpu_1b": gpu_1b, "scout": scout, "maverick": maverick, "behemoth": behemoth}
