"""Evaluation: length generalization (`length`); the benchmark suite's metrics (`metrics`), answer extraction
(`extract`) and the subprocess sandbox for generated code (`sandbox`)."""
