"""Pallas kernels; each folder holds reference.py, kernel.py, ops.py and tests."""
