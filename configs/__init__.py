"""Experiment and model-preset configs (ml-collections). Imports only ml_collections and each other."""
