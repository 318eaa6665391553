"""Pure functions without Flax: attention and MoE dispatch. Kernels plug in here."""
