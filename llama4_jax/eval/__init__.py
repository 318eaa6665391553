"""Evaluation commands: length generalization (`length`)."""
