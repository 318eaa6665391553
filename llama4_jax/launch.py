"""Starts N local processes of the main job that form one multi-process JAX run (coordinator on 127.0.0.1).

    python -m llama4_jax.launch --num_processes=2 --devices_per_process=4 -- \\
        --config=configs/default.py --workdir=runs/mp

Each process gets `--devices_per_process` simulated CPU devices (XLA's host-platform device count) and the
`--coordinator_address/--num_processes/--process_id` flags of `llama4_jax.main`; CPU collectives go over gloo.
For tests and small CPU clusters; on TPU pods and GPU clusters run `llama4_jax.main --distributed` once per host
(see the README). Process 0's output passes through; the others' lines carry a `[pI]` prefix. If one process
fails the others are stopped, and the exit code is the first failure's. SIGTERM is forwarded to every process
(the main job then checkpoints and exits, ready to resume).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "number of local processes", lower_bound=1)
_DEVICES = flags.DEFINE_integer("devices_per_process", 1, "simulated CPU devices per process", lower_bound=1)
_PORT = flags.DEFINE_integer("port", 0, "coordinator port on 127.0.0.1 (0 = a free one)")
_MODULE = flags.DEFINE_string("module", "llama4_jax.main", "python module each process runs")


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(prefix + line)
    out.flush()
  stream.close()


def launch(main_args: list[str], num_processes: int, devices_per_process: int, port: int = 0,
           module: str = "llama4_jax.main") -> int:
  """Runs the processes to completion; returns 0 or the first non-zero exit code."""
  address = f"127.0.0.1:{port or free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
             + f" --xla_force_host_platform_device_count={devices_per_process}")
  procs, pumps = [], []
  for i in range(num_processes):
    cmd = [sys.executable, "-m", module, *main_args, f"--coordinator_address={address}",
           f"--num_processes={num_processes}", f"--process_id={i}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    procs.append(proc)
    t = threading.Thread(target=_pump, args=(proc.stdout, "" if i == 0 else f"[p{i}] ", sys.stdout), daemon=True)
    t.start()
    pumps.append(t)

  def forward(signum, _frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = signal.signal(signal.SIGTERM, forward)
  code = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed and not code:
        code = failed[0]
        for p in procs:  # a lone survivor would wait forever in the next collective
          if p.poll() is None:
            p.terminate()
      time.sleep(0.2)
    if not code:
      code = next((p.returncode for p in procs if p.returncode), 0)
  finally:
    signal.signal(signal.SIGTERM, previous)
    for t in pumps:
      t.join(timeout=5)
  return code


def main(argv):
  sys.exit(launch(argv[1:], _NUM_PROCESSES.value, _DEVICES.value, _PORT.value, _MODULE.value))


if __name__ == "__main__":
  app.run(main)
