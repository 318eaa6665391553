"""Hugging Face checkpoint import/export."""
