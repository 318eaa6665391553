"""Running model-generated Python for the code benchmarks (MBPP pass@1, LiveCodeBench pass@1), issue 12.

What `run_code` does to the program (a separate `python -I` process per run):
* **Resources.** Address space (`memory_mb`), CPU seconds (timeout + 1), size of any file written (64 MiB, so
  also of its captured stdout/stderr), number of processes of the user (modest headroom; root is exempt), no
  core files. The parent's wall clock kills the whole process group (its own session) at `timeout_s`.
* **Network.** The child first tries to enter a fresh network namespace (only a loopback that is down): unshare
  (CLONE_NEWNET), which needs root / CAP_SYS_ADMIN, else CLONE_NEWUSER | CLONE_NEWNET, which unprivileged users
  get where the kernel allows user namespaces. Independently, a preamble replaces socket creation, connection and
  name resolution in `socket` and `_socket` with functions raising PermissionError, so network use fails even
  where no namespace could be entered (`network_namespace_available()` says which case holds). Socket pairs
  (asyncio's self-pipe) keep working.
* **Files.** A fresh temporary directory as the working directory (and HOME, TMPDIR), removed afterwards; a
  minimal environment (no proxies, no PYTHON* variables; `-I` also ignores user site-packages).

This is NOT a security boundary against a determined attacker: the program runs as the calling user, can read
whatever that user can read, write outside its directory, and undo the Python-level socket guard (ctypes, the
original classes); without a network namespace it still reaches the network that way. It stops accidents of
honest-but-wrong code (infinite loops, memory blow-ups, fork loops, stray downloads). For untrusted models or
shared machines, run the whole evaluation in a container or VM without network, as an unprivileged user.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
FILE_SIZE_LIMIT = 64 * 2**20
PROCESS_HEADROOM = 64
_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")

# Runs in the child: confines itself (network namespace, resource limits; done here rather than in a preexec_fn,
# which would run between fork and exec of the multithreaded parent), blocks sockets, then runs the program as
# __main__ (so `from __future__` imports and tracebacks keep the program's own line numbers)
_RUNNER = r"""
import ctypes, ctypes.util, errno, json, resource
def _confine(limits):
  try:
    unshare = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).unshare
    unshare.argtypes = [ctypes.c_int]
    if unshare(%(newnet)d) != 0 and ctypes.get_errno() == errno.EPERM:
      unshare(%(newuser)d | %(newnet)d)  # a failure here leaves the socket guard alone
  except (OSError, AttributeError):
    pass
  for which, soft, hard in limits:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:  # limits can only be lowered
      soft, hard = min(soft, current_hard), min(hard, current_hard)
    try:
      resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
      pass  # a limit the platform refuses; the others still hold
import _socket, runpy, socket, sys
def _blocked(*args, **kwargs):
  raise PermissionError("network access is disabled in the sandbox")
_RawSocket = _socket.socket
class _GuardedRawSocket(_RawSocket):
  # socket.socket.__init__ calls _socket.socket.__init__ by name, so this guards socket.socket as well
  def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
    if fileno is None:  # wrapping an existing descriptor (socketpair, fromfd) opens nothing new
      _blocked()
    _RawSocket.__init__(self, family, type, proto, fileno)
class _GuardedSocket(socket.socket):
  def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
    if fileno is None:
      _blocked()
    super().__init__(family, type, proto, fileno)
_socket.socket = _GuardedRawSocket
socket.socket = _GuardedSocket
for _module in (socket, _socket):
  for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
                "gethostbyaddr", "getnameinfo"):
    if hasattr(_module, _name):
      setattr(_module, _name, _blocked)
del _module, _name
_confine(json.loads(sys.argv[1]))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
""" % {"newnet": CLONE_NEWNET, "newuser": CLONE_NEWUSER}


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  status: str  # "ok" | "error" | "timeout" | "memory"
  stdout: str
  stderr: str
  returncode: int | None  # negative: killed by that signal
  seconds: float


def _user_tasks() -> int | None:
  """Threads of all processes of this real uid (what RLIMIT_NPROC counts), or None where /proc is unreadable."""
  uid, total = str(os.getuid()), 0
  try:
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
  except OSError:
    return None
  for pid in pids:
    try:
      with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue  # the process has exited meanwhile
    if fields.get("Uid", "").split()[:1] == [uid]:
      total += int(fields.get("Threads", "1"))
  return total


def _limits(timeout_s: float, memory_mb: int) -> list[tuple[int, int, int]]:
  """(resource, soft, hard) for the child. The CPU hard limit sits a second above the soft one: at the soft limit
  the kernel sends SIGXCPU (read as a timeout), at the hard one SIGKILL (which would read as the OOM killer)."""
  cpu = math.ceil(timeout_s) + 1
  limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT, FILE_SIZE_LIMIT),
            (resource.RLIMIT_CORE, 0, 0)]
  tasks = _user_tasks() if os.getuid() != 0 else None  # root ignores RLIMIT_NPROC anyway
  if tasks is not None:
    limits.append((resource.RLIMIT_NPROC, tasks + PROCESS_HEADROOM, tasks + PROCESS_HEADROOM))
  memory = memory_mb * 2**20
  limits.append((resource.RLIMIT_AS, memory, memory))  # last: the child allocates nothing after it
  return limits


def _environment(workdir: str) -> dict[str, str]:
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
         "LC_ALL": "C.UTF-8"}
  # BLAS thread pools reserve address space per thread, enough to hit a small RLIMIT_AS on import numpy
  env.update({v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
  return env


def _read(path: str, limit: int) -> str:
  with open(path, "rb") as f:
    data = f.read(limit + 1)
  text = data[:limit].decode("utf-8", errors="replace")
  return text + ("\n[sandbox: output truncated]" if len(data) > limit else "")


def _status(returncode: int | None, timed_out: bool, stderr: str) -> str:
  if timed_out or returncode == -signal.SIGXCPU:
    return "timeout"
  if returncode == 0:
    return "ok"
  if returncode == -signal.SIGKILL or any(sign in stderr for sign in _MEMORY_SIGNS):
    return "memory"  # SIGKILL we did not send: the kernel's OOM killer
  return "error"


def run_code(source: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 512,
             tmp_dir: str | None = None, max_output_bytes: int = 8 * 2**20) -> SandboxResult:
  """Run `source` as a Python program under the limits of the module docstring, stdin given, stdout/stderr
  captured (each truncated to `max_output_bytes`)."""
  if timeout_s <= 0 or memory_mb <= 0:
    raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
  root = tempfile.mkdtemp(prefix="sandbox-", dir=tmp_dir)
  try:
    workdir = os.path.join(root, "work")
    os.mkdir(workdir)
    program = os.path.join(root, "program.py")
    with open(program, "w", encoding="utf-8") as f:
      f.write(source)
    paths = {name: os.path.join(root, name) for name in ("stdin", "stdout", "stderr")}
    with open(paths["stdin"], "w", encoding="utf-8") as f:
      f.write(stdin)
    limits = json.dumps(_limits(timeout_s, memory_mb))
    start = time.monotonic()
    with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, open(paths["stderr"], "wb") as ferr:
      proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER, limits, program], stdin=fin, stdout=fout,
                              stderr=ferr, cwd=workdir, env=_environment(workdir), start_new_session=True)
      timed_out = not _wait_unreaped(proc.pid, timeout_s)
      _kill_group(proc.pid)  # on timeout, and any background children the program left behind
      proc.wait()
    seconds = time.monotonic() - start
    stdout, stderr = _read(paths["stdout"], max_output_bytes), _read(paths["stderr"], max_output_bytes)
    if proc.returncode == -signal.SIGXFSZ:
      stderr += f"\n[sandbox: file size limit of {FILE_SIZE_LIMIT} bytes exceeded]"
    return SandboxResult(_status(proc.returncode, timed_out, stderr), stdout, stderr, proc.returncode, seconds)
  finally:
    shutil.rmtree(root, ignore_errors=True)


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
  """Wait up to `timeout_s` for the child to exit, without reaping it: while it is an unreaped zombie its pid,
  which is also its process group's id, cannot be reused, so killing the group afterwards hits only the
  program's processes. True when it exited in time."""
  deadline, pause = time.monotonic() + timeout_s, 0.001
  while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
    if time.monotonic() >= deadline:
      return False
    time.sleep(pause)
    pause = min(2 * pause, 0.05)
  return True


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass  # the group is already gone


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
  """Whether `run_code`'s children get their own network namespace here (else only the socket guard holds)."""
  probe = "import os; print(os.readlink('/proc/self/ns/net'))"
  try:
    result = run_code(probe, timeout_s=10.0)
    return result.status == "ok" and result.stdout.strip() != os.readlink("/proc/self/ns/net")
  except OSError:
    return False


def check_program(program: str, tests: str | Sequence[str], *, timeout_s: float = 10.0,
                  memory_mb: int = 512) -> bool:
  """MBPP-style: the program followed by its assert statements, run as one file; True iff it exits cleanly."""
  tests = [tests] if isinstance(tests, str) else list(tests)
  source = program + "\n" + "\n".join(tests) + "\n"
  return run_code(source, timeout_s=timeout_s, memory_mb=memory_mb).status == "ok"


def _lines(text: str) -> list[str]:
  lines = [line.rstrip() for line in text.splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  return lines


def check_io(program: str, cases: Sequence[tuple[str, str]], *, timeout_s: float = 10.0,
             memory_mb: int = 512) -> bool:
  """LiveCodeBench-style stdin/stdout tests: every case must exit cleanly with the expected output, compared
  line by line after stripping trailing whitespace of each line and trailing blank lines. Stops at the first
  failing case."""
  if not cases:
    raise ValueError("check_io needs at least one (stdin, expected stdout) case, got none")
  for stdin, expected in cases:
    result = run_code(program, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)
    if result.status != "ok" or _lines(result.stdout) != _lines(expected):
      return False
  return True
