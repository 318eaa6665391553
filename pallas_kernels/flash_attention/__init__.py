"""Flash attention for Llama 4: GQA, causal, chunked (iRoPE) and packed-segment masks, Pallas fwd + bwd."""

from pallas_kernels.flash_attention.ops import flash_attention
from pallas_kernels.flash_attention.reference import attention_reference

__all__ = ["flash_attention", "attention_reference"]
