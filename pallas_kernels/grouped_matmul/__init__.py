"""Grouped matmul (MoE expert FFN) as a Pallas kernel with an XLA reference."""

from pallas_kernels.grouped_matmul.ops import gmm
from pallas_kernels.grouped_matmul.ops import tgmm
from pallas_kernels.grouped_matmul.reference import gmm_reference
from pallas_kernels.grouped_matmul.reference import tgmm_reference

__all__ = ['gmm', 'tgmm', 'gmm_reference', 'tgmm_reference']
