"""Run untrusted, model-written Python in a separate, limited process (SPEC.md §2).

Code execution is hostile by assumption. Each run gets, in this order of defence:

- a **fresh working directory** (``mkdtemp``, owned by the sandbox uid, removed afterwards);
- a **cleared environment** (nothing of the parent's ``os.environ`` reaches the child);
- **namespaces** where the OS allows (root, or ``CAP_SYS_ADMIN``): a new network namespace (only a
  loopback that is down: no connection leaves, not even to 127.0.0.1), a new PID namespace (the
  child cannot see or signal any outside process, and when its init dies the kernel kills every
  process left in it, so nothing outlives the run), a new IPC namespace, and a new mount namespace
  in which the whole file system is read-only except the working directory;
- a **dedicated uid** per concurrent run (far above any login uid) when the parent is root, so that
  file permissions and ``RLIMIT_NPROC`` bite and two runs cannot signal each other;
  ``PR_SET_NO_NEW_PRIVS`` so set-uid binaries cannot give root back;
- **rlimits**: CPU seconds, address space, process count, file size, open files, no core dumps;
- a **wall-clock timeout** that SIGKILLs the whole session (process group), then the PID namespace
  init, then (when no PID namespace was available) every process of the sandbox uid;
- **capped output**: stdout and stderr are read incrementally; past the cap the run is killed.

What was actually active is reported in ``RunResult.isolation`` (``{"netns": True, "pidns": True,
"mntns": True, "readonly_fs": True, "uid": 2146435073, ...}``); without root the namespaces and the
uid drop fall away and only the rlimits, the session kill, the directory and the environment remain.

How it works: the parent starts a small, trusted *launcher* (``_LAUNCHER`` below, run as
``python -I -S -c``) in a new session. The launcher unshares the namespaces, prepares the mounts,
forks (the child is PID 1 of the new PID namespace), and the child sets the rlimits, drops to the
sandbox uid, arms ``PR_SET_PDEATHSIG`` and ``exec``s the untrusted program. No ``preexec_fn`` is
used, so starting runs from many threads at once is safe.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "error", "timeout", "oom", "killed")

# Sandbox uids: one per concurrent run, far above login uids (which stop near 60000) and above the
# 100000+ ranges that subuid tools hand out. The pid term keeps two trainers on one host apart.
_UID_BASE = 0x7FF00000
_UIDS_PER_PROCESS = 256


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run."""

    timeout_s: float = 6.0
    """Wall-clock limit; the whole process tree is killed when it passes."""
    cpu_s: int | None = None
    """RLIMIT_CPU in seconds (SIGXCPU at the limit); ``None``: ``ceil(timeout_s) + 1``."""
    memory_mb: int = 1024
    """RLIMIT_AS, the address space of each process, in MiB."""
    max_processes: int = 16
    """RLIMIT_NPROC for the sandbox uid (bites only after the uid drop; root is exempt)."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: the largest file the program may write, in MiB."""
    open_files: int = 256
    """RLIMIT_NOFILE."""
    max_output_bytes: int = 64 * 1024
    """Cap on each of stdout and stderr; a program that writes more is killed (status ``killed``)."""

    def __post_init__(self):
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        for name in ("memory_mb", "max_processes", "file_size_mb", "open_files", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.cpu_s is not None and (not isinstance(self.cpu_s, int) or self.cpu_s < 1):
            raise ValueError(f"cpu_s must be a positive integer or None, got {self.cpu_s!r}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb={self.memory_mb} is too small for a Python interpreter; use >= 64")


@dataclass(frozen=True)
class RunResult:
    """What one run did. ``status``: ``ok`` (exit 0), ``error`` (non-zero exit), ``timeout`` (wall
    clock or CPU limit), ``oom`` (MemoryError or killed by the kernel's OOM killer), ``killed``
    (another signal, or the output cap was passed)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: dict[str, Any] = field(default_factory=dict)
    output_truncated: bool = False


@dataclass(frozen=True)
class Job:
    """One program to run: its source, its stdin, and extra files for its working directory."""

    code: str
    stdin: str = ""
    files: dict[str, str] = field(default_factory=dict)


# The trusted launcher. It runs as the parent's user with only the standard library (``-I -S``),
# reads its configuration as JSON from argv[1], writes one JSON line per stage to the status pipe,
# and ends with the child's exit code (128 + signal when the child died of a signal).
_LAUNCHER = r"""
import ctypes, json, os, resource, sys

cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]
libc = ctypes.CDLL(None, use_errno=True)
iso = {"netns": False, "pidns": False, "ipcns": False, "mntns": False, "readonly_fs": False}

def report(**kw):
    os.write(status_fd, (json.dumps(kw) + "\n").encode())

def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + target)

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18

def set_readonly(path, recursive, readonly):
    # mount_setattr(2), syscall 442 on every architecture (Linux >= 5.12)
    attr = (ctypes.c_uint64 * 4)(1 if readonly else 0, 0 if readonly else 1, 0, 0)
    flags = 0x8000 if recursive else 0  # AT_RECURSIVE
    check(libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), ctypes.c_char_p(path.encode()),
                       ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(32)), "mount_setattr " + path)

def first_blocker(path):
    # the outermost directory on the path that "other" users cannot traverse (e.g. /root, 0700)
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None

def setup_fs(workdir, expose):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # the interpreter may live under a directory the sandbox uid cannot enter (pyenv in /root):
    # hide that directory under an empty tmpfs and bind only the interpreter's tree back into it
    hidden = {}
    for d in expose:
        b = first_blocker(d)
        if b is not None:
            hidden[d] = (b, os.open(d, os.O_PATH | os.O_DIRECTORY))
    blockers = sorted({b for b, _ in hidden.values()})
    for b in blockers:
        if not any(b != o and b.startswith(o + "/") for o in blockers):
            mount("tmpfs", b, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for d, (_, fd) in hidden.items():
        os.makedirs(d, mode=0o755, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, d, None, MS_BIND | MS_REC)
        os.close(fd)
    mount(workdir, workdir, None, MS_BIND)
    set_readonly("/", True, True)
    set_readonly(workdir, False, False)
    os.chdir(workdir)  # the old cwd is on the read-only mount below the new bind mount

os.umask(0o022)
if cfg["namespaces"]:
    for name, flag in (("netns", 0x40000000), ("ipcns", 0x08000000), ("pidns", 0x20000000), ("mntns", 0x00020000)):
        iso[name] = libc.unshare(ctypes.c_int(flag)) == 0
    if iso["mntns"]:
        try:
            setup_fs(cfg["workdir"], cfg["expose"])
            iso["readonly_fs"] = True
        except OSError as e:
            iso["fs_error"] = str(e)
report(**iso)

pid = os.fork()
if pid == 0:
    try:
        child = {"uid": os.getuid(), "proc": False}
        if iso["pidns"] and iso["mntns"]:
            try:  # a /proc that shows only this namespace's processes
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                child["proc"] = True
            except OSError:
                pass
        lim = cfg["limits"]
        for res, value in ((resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_AS, lim["memory_bytes"]),
                           (resource.RLIMIT_NPROC, lim["max_processes"]),
                           (resource.RLIMIT_FSIZE, lim["file_size_bytes"]),
                           (resource.RLIMIT_NOFILE, lim["open_files"]), (resource.RLIMIT_CORE, 0)):
            # CPU: soft limit sends SIGXCPU, the hard limit one second later SIGKILL
            resource.setrlimit(res, (value, value + 1 if res == resource.RLIMIT_CPU else value))
        uid = cfg["uid"]
        if uid is not None and not iso["readonly_fs"] and any(first_blocker(d) for d in cfg["expose"]):
            # without our mounts the sandbox uid could not even start the interpreter (e.g. pyenv
            # under /root, mode 0700): keep the uid and say so
            child["uid_skipped"] = "the interpreter is unreachable for an unprivileged uid without a mount namespace"
            uid = None
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            child["uid"] = os.getuid()
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL (after the uid change, which clears it)
        report(**child)
        os.close(status_fd)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        os.write(2, ("sandbox: setup failed: %r\n" % (e,)).encode())
    os._exit(127)

_, status, usage = os.wait4(pid, 0)
report(wait_status=status, cpu_s=round(usage.ru_utime + usage.ru_stime, 3), max_rss_kb=usage.ru_maxrss)
os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


class _UidPool:
    """Hands out one sandbox uid per concurrent run (only when the parent runs as root)."""

    def __init__(self):
        base = _UID_BASE + (os.getpid() % 4096) * _UIDS_PER_PROCESS
        self._free = list(range(base + _UIDS_PER_PROCESS - 1, base - 1, -1))
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"more than {_UIDS_PER_PROCESS} concurrent sandbox runs in one process")
            return self._free.pop()

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


_UIDS = _UidPool()  # process-wide: uids must be unique across every Sandbox of the process


def _uid_of(pid: int) -> int | None:
    """Real uid of a live process (``None`` for zombies, which hold nothing and cannot be killed)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                    return None
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _environ_of(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _kill_survivors(belongs) -> int:
    """SIGKILL every process for which ``belongs(pid)`` holds, until none is left (processes can
    fork while we look, so repeat); returns how many could not be killed."""
    me = os.getpid()
    for _ in range(100):
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and belongs(int(e))]
        if not pids:
            return 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
    return len([e for e in os.listdir("/proc") if e.isdigit() and belongs(int(e))])


class Sandbox:
    """Runs untrusted Python programs under ``limits``; ``run_many`` runs them on a pool of
    ``workers`` threads (default: the CPUs this process may use), one subprocess each."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None, namespaces: bool = True):
        self.limits = limits or Limits()
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        self.namespaces = namespaces
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # Where the interpreter lives: bound back into the sandbox when hidden (see the launcher).
        self._python = sys.executable
        self._expose = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)})

    # -- one run -----------------------------------------------------------------------------

    def run(self, code: str, stdin: str = "", files: dict[str, str] | None = None) -> RunResult:
        """Run ``code`` as ``main.py`` with ``stdin`` in a fresh directory holding ``files``."""
        lim = self.limits
        as_root = os.geteuid() == 0
        uid = _UIDS.acquire() if as_root else None
        workdir = tempfile.mkdtemp(prefix="credit-sbx-")
        status_r, status_w = os.pipe()
        marker = f"CREDIT_SANDBOX_RUN={os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}".encode()
        proc, stages = None, {}
        try:
            for name, text in {**(files or {}), "main.py": code}.items():
                with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="replace") as f:
                    f.write(text)
            if uid is not None:
                for name in os.listdir(workdir):
                    os.chown(os.path.join(workdir, name), uid, uid)
                os.chown(workdir, uid, uid)
            stdin_file = tempfile.TemporaryFile()  # a file, not a pipe: no writer thread, no deadlock
            stdin_file.write(stdin.encode("utf-8", errors="replace"))
            stdin_file.seek(0)
            cfg = {
                "status_fd": status_w,
                "namespaces": self.namespaces and as_root,
                "workdir": workdir,
                "expose": self._expose,
                "uid": uid,
                "argv": [self._python, "-I", "main.py"],
                "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                        "HOME": workdir, "TMPDIR": workdir, "PYTHONDONTWRITEBYTECODE": "1",
                        # lets the parent find escaped descendants when it has no PID namespace
                        "CREDIT_SANDBOX_RUN": marker.decode().split("=", 1)[1]},
                "limits": {
                    "cpu_s": lim.cpu_s or math.ceil(lim.timeout_s) + 1,
                    "memory_bytes": lim.memory_mb << 20,
                    "max_processes": lim.max_processes,
                    "file_size_bytes": lim.file_size_mb << 20,
                    "open_files": lim.open_files,
                },
            }
            start = time.monotonic()
            with stdin_file:
                proc = subprocess.Popen(
                    [self._python, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                    stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env={},
                    start_new_session=True, pass_fds=(status_w,), close_fds=True,
                )
            os.close(status_w)
            status_w = -1
            out, err, timed_out, truncated = self._collect(proc, start + lim.timeout_s)
            wall = time.monotonic() - start
            stages = self._read_status(status_r)
        finally:
            if proc is not None:
                self._kill(proc)  # the session: whatever is left of the launcher and its children
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)
            # Survivors: with a PID namespace and a normal exit there can be none (the kernel kills
            # the namespace with its init); otherwise look them up by uid (root) or by marker.
            clean_exit = proc is not None and "wait_status" in stages and stages.get("pidns")
            if clean_exit:
                leftover = 0
            elif uid is not None and stages.get("uid") == uid:
                leftover = _kill_survivors(lambda pid: _uid_of(pid) == uid)
            else:
                leftover = _kill_survivors(lambda pid: marker in _environ_of(pid))
            shutil.rmtree(workdir, ignore_errors=True)
            if uid is not None and leftover == 0:
                _UIDS.release(uid)  # a uid with survivors is never reused
        isolation = {k: v for k, v in stages.items() if k not in ("wait_status", "cpu_s", "max_rss_kb")}
        isolation.setdefault("uid", uid if uid is not None else os.getuid())
        isolation["leftover_processes"] = leftover
        stdout = out.decode("utf-8", errors="replace").replace(workdir + "/", "")
        stderr = err.decode("utf-8", errors="replace").replace(workdir + "/", "")
        returncode, signum = self._exit_of(proc, stages)
        cpu_limit = cfg["limits"]["cpu_s"]
        status = self._status(returncode, signum, stderr, timed_out, truncated, stages, cpu_limit)
        return RunResult(status, returncode, stdout, stderr, wall, isolation, truncated)

    def _collect(self, proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, bool, bool]:
        """Read stdout and stderr incrementally until both close, the deadline passes, or a stream
        passes the cap; returns (stdout, stderr, timed_out, truncated)."""
        cap = self.limits.max_output_bytes
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        timed_out = truncated = False
        exited_at = None
        with selectors.DefaultSelector() as sel:
            for fd in bufs:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map() and not truncated:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if proc.poll() is not None:
                    # the launcher is gone; a descendant that kept the pipes open gets a short grace
                    exited_at = exited_at or now
                    if now - exited_at > 0.2:
                        break
                for key, _ in sel.select(timeout=min(deadline - now, 0.05 if exited_at else 0.5)):
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    buf = bufs[key.fd]
                    buf += data[: max(0, cap - len(buf))]
                    truncated = truncated or len(buf) >= cap
        if timed_out or truncated:
            self._kill(proc)
        out, err = bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()])
        proc.stdout.close()
        proc.stderr.close()
        return out, err, timed_out, truncated

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGKILL the launcher's session; the PID-namespace init dies with the launcher (PDEATHSIG)
        and takes every process of the namespace with it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel reaps SIGKILLed processes
            proc.kill()
            proc.wait()

    @staticmethod
    def _read_status(fd: int) -> dict[str, Any]:
        data = b""
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                data += chunk
        except BlockingIOError:  # a killed launcher's forked child may still hold the write end
            pass
        stages: dict[str, Any] = {}
        for line in data.decode(errors="replace").splitlines():
            try:
                stages.update(json.loads(line))
            except json.JSONDecodeError:
                continue
        return stages

    @staticmethod
    def _exit_of(proc: subprocess.Popen, stages: dict[str, Any]) -> tuple[int | None, int | None]:
        """(returncode, signal) of the untrusted program: from its wait status when the launcher
        reported it, else from the launcher itself (killed by us)."""
        if "wait_status" in stages:
            ws = stages["wait_status"]
            if os.WIFSIGNALED(ws):
                return -os.WTERMSIG(ws), os.WTERMSIG(ws)
            return os.WEXITSTATUS(ws), None
        rc = proc.returncode
        return rc, (-rc if rc is not None and rc < 0 else None)

    @staticmethod
    def _status(rc, signum, stderr: str, timed_out: bool, truncated: bool, stages, cpu_limit: int) -> str:
        # the CPU rlimit sends SIGXCPU, then SIGKILL at the hard limit (a PID-namespace init ignores
        # SIGXCPU, so there it is always the SIGKILL): both mean the CPU time ran out
        out_of_cpu = stages.get("cpu_s", 0.0) >= cpu_limit - 0.05
        if timed_out or signum == signal.SIGXCPU or (signum == signal.SIGKILL and out_of_cpu):
            return "timeout"
        if truncated:
            return "killed"
        tail = stderr[-2000:]
        if rc != 0 and ("MemoryError" in tail or "Cannot allocate memory" in tail):
            return "oom"
        if signum == signal.SIGKILL and "wait_status" in stages:
            return "oom"  # SIGKILLed while we did not kill it: the kernel's OOM killer
        if signum is not None:
            return "killed"
        return "ok" if rc == 0 else "error"

    # -- many runs ---------------------------------------------------------------------------

    def submit(self, job: Job, cancel: threading.Event | None = None):
        """Schedule one job on the shared pool; returns a ``Future[RunResult | None]`` (``None``:
        ``cancel`` was set before the job started)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox")
        return self._pool.submit(self._run_unless, job, cancel)

    def _run_unless(self, job: Job, cancel: threading.Event | None) -> RunResult | None:
        if cancel is not None and cancel.is_set():
            return None
        return self.run(job.code, job.stdin, job.files)

    def run_many(self, jobs: Sequence[Job]) -> list[RunResult]:
        """Run every job, at most ``workers`` at a time; results in the order of ``jobs``."""
        return [f.result() for f in [self.submit(j) for j in jobs]]

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["STATUSES", "Job", "Limits", "RunResult", "Sandbox"]
