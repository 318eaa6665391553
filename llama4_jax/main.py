"""Entry point: parses flags and runs the experiment.

    python -m llama4_jax.main --config=configs/default.py[:variant] --workdir=<dir> [--config.<key>=<value> ...]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from llama4_jax.train.loop import NonFiniteError, Preempted, train_and_evaluate
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Preempted as e:
    print(str(e), flush=True)
  except NonFiniteError as e:
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(3)


if __name__ == "__main__":
  sys.path.insert(0, os.getcwd())  # experiment configs import `configs.*` from the repository root
  app.run(main)
