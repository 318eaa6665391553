"""Entry point: parses flags and runs the experiment.

    python -m llama4_jax.main --config=configs/default.py[:variant] --workdir=<dir> [--config.<key>=<value> ...]

Multi-process (JAX's multi-controller runtime): every process runs this same command plus either
`--distributed` (cluster auto-detection: TPU pod slices, SLURM, Open MPI) or explicit
`--coordinator_address=host:port --num_processes=N --process_id=i` (what `python -m llama4_jax.launch` passes to
local CPU processes).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator_address)")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
  """jax.distributed.initialize when configured; must run before any other JAX call."""
  if not (_DISTRIBUTED.value or _COORDINATOR.value):
    return
  import jax
  if _COORDINATOR.value and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every multi-process save step at INFO


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before the CPU backend starts: steps reuse their buffers' memory, unless the training state is a large share of
  # the machine (llama4_jax/host_memory.py).
  from llama4_jax.config import ConfigError, model_config
  from llama4_jax.host_memory import retain_freed_host_memory, training_state_bytes
  try:
    state_bytes = training_state_bytes(model_config(_CONFIG.value))
  except (ConfigError, ValueError, TypeError, KeyError, AttributeError):
    state_bytes = None  # a bad model section: the experiment's checks below name it, with its stage
  retain_freed_host_memory(state_bytes=state_bytes)
  initialize_distributed()
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
