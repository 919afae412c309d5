"""Run untrusted, model-written Python in a separate, limited process (docs/method.md §2).

Code execution is hostile by assumption. Each run gets, in this order of defence:

- a **fresh working directory** (``mkdtemp``, owned by the sandbox uid, removed afterwards);
- a **cleared environment** (nothing of the parent's ``os.environ`` reaches the child);
- **namespaces**: a new network namespace (only a loopback that is down: no connection leaves, not
  even to 127.0.0.1), a new PID namespace (the child cannot see or signal any outside process, and
  when its init dies the kernel kills every process left in it, so nothing outlives the run), a new
  IPC namespace, and a new mount namespace whose root is a **minimal, read-only file system**: the
  system directories (``/usr``, ``/lib*``, ``/bin``), the interpreter's own tree with every
  ``site-packages`` emptied, a few device nodes, a private ``/proc`` and the working directory, the
  only writable place. Nothing else exists for the program: not ``/tmp``, not ``/home``, not the
  project, not the data sets whose expected outputs grade it;
- a **dedicated uid** per concurrent run (far above any login uid) when the parent is root, so that
  file permissions and ``RLIMIT_NPROC`` bite and two runs cannot signal each other;
  ``PR_SET_NO_NEW_PRIVS`` so set-uid binaries cannot give root back;
- **rlimits**: CPU seconds, address space, process count, file size, open files, no core dumps;
- a **wall-clock timeout** that SIGKILLs the whole session (process group), then the PID namespace
  init, then every process of the sandbox uid or carrying the run's environment marker;
- **capped output**: stdout and stderr are read incrementally; past the cap the run is killed.

Root creates the namespaces directly (``mode="root"``). An ordinary user (a laptop, a cluster login
node) gets the same namespaces inside a **user namespace** (``mode="userns"``): the program runs
under the user's own uid, without capabilities, in the same minimal file system. Where neither
works (user namespaces disabled by a sysctl, AppArmor or a container's seccomp policy), nothing
contains the program, and the sandbox **refuses** to run it (:class:`SandboxUnavailable`, raised by
the constructor) unless the user opts in with ``allow_unsandboxed=True`` or
``CREDIT_ALLOW_UNSANDBOXED=1``; then it runs with the rlimits, the session kill, the directory and
the environment only, warns once, and reports ``contained: False``. ``namespaces=False`` asks for
that same reduced mode explicitly. There is no quiet downgrade: a run whose namespaces or file
system cannot be set up is refused, not run with less.

What was active is reported in ``RunResult.isolation`` (``{"mode": "root", "contained": True,
"netns": True, "pidns": True, "mntns": True, "readonly_fs": True, "uid": 2146435073,
"leftover_processes": 0, ...}``); ``leftover_processes`` counts the run's processes still alive
after the clean-up, looked up in ``/proc`` on every path.

How it works: the parent starts a small, trusted *launcher* (``_LAUNCHER`` below, run as
``python -I -S -c``) in a new session. The launcher unshares the namespaces, builds the file system
and pivots into it, forks (the child is PID 1 of the new PID namespace), and the child sets the
rlimits, drops to the sandbox uid, arms ``PR_SET_PDEATHSIG`` and ``exec``s the untrusted program
with the base interpreter (not a virtual environment's, whose packages stay hidden). No
``preexec_fn`` is used, so starting runs from many threads at once is safe.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from credit.errors import SetupError

STATUSES = ("ok", "error", "timeout", "oom", "killed")
ALLOW_UNSANDBOXED_ENV = "CREDIT_ALLOW_UNSANDBOXED"

# Sandbox uids: one per concurrent run, far above login uids (which stop near 60000) and above the
# 100000+ ranges that subuid tools hand out. The pid term keeps two trainers on one host apart.
_UID_BASE = 0x7FF00000
_UIDS_PER_PROCESS = 256

# What the program sees of the host, read-only: what the interpreter needs to start (its loader and
# shared libraries) and little else. A symlink (``/lib`` -> ``usr/lib`` on merged-/usr systems) is
# recreated as a symlink; a missing entry is skipped.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                 "/etc/ld.so.cache", "/etc/localtime")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class SandboxUnavailable(SetupError):
    """Model-written code cannot be contained here, and the user did not opt in to run it anyway."""


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
    """RLIMIT_NPROC for the program's uid (bites only after the uid drop or in a user namespace)."""
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
# and ends with the child's exit code (128 + signal when the child died of a signal). When a
# namespace or the file system cannot be set up it reports ``refused`` and never starts the program.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys

cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]
mode = cfg["mode"]
libc = ctypes.CDLL(None, use_errno=True)
iso = {"mode": mode, "userns": False, "netns": False, "pidns": False, "ipcns": False, "mntns": False,
       "readonly_fs": False}

def report(**kw):
    os.write(status_fd, (json.dumps(kw) + "\n").encode())

def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))

def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + target)

def write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# per-mount flags a read-only remount must repeat (a user namespace may not clear them): + noatime, nodiratime, relatime
KEEP = MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048 | (1 << 21)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "ppc64": 203,
              "s390x": 217}  # glibc has no wrapper

def enter_namespaces():
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
    if mode == "userns":
        uid, gid = os.geteuid(), os.getegid()
        check(libc.unshare(ctypes.c_int(flags | CLONE_NEWUSER)), "unshare(user, mount, pid, net, ipc namespaces)")
        # Only our own uid can be mapped. The program keeps it (root outside is nobody inside): not
        # uid 0 of the namespace, so its exec drops the capabilities that unshare gave us.
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", "%d %d 1" % (uid or 65534, uid))
        write("/proc/self/gid_map", "%d %d 1" % (gid or 65534, gid))
    else:
        check(libc.unshare(ctypes.c_int(flags)), "unshare(mount, pid, net, ipc namespaces)")
    iso.update(userns=mode == "userns", netns=True, pidns=True, ipcns=True, mntns=True)

def set_readonly(path, recursive, readonly):
    # mount_setattr(2), syscall 442 on every architecture (Linux >= 5.12)
    attr = (ctypes.c_uint64 * 4)(1 if readonly else 0, 0 if readonly else 1, 0, 0)
    flags = 0x8000 if recursive else 0  # AT_RECURSIVE
    check(libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), ctypes.c_char_p(path.encode()),
                       ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(32)), "mount_setattr " + path)

def setup_fs(workdir, expose, hide, child):
    # The new root is a tmpfs mounted over the working directory's own path (any directory would do;
    # this one is ours), holding only bind mounts of ``expose``; the working directory itself is
    # reached through a descriptor opened before the tmpfs covered it.
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    work_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    root = workdir
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    binds = []
    for path in expose:  # none lies inside another: every directory made here is on the tmpfs
        target = root + path
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.mkdir(target, 0o755)
        else:  # a file or a device node
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
        mount(path, target, None, MS_BIND | MS_REC)
        binds.append(path)
    for path in hide:  # empty every site-packages inside what is exposed (mounting on it, not writing to it)
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=4k")
            binds.append(path)
    os.makedirs(root + workdir, 0o755)
    mount("/proc/self/fd/%d" % work_fd, root + workdir, None, MS_BIND)
    os.close(work_fd)
    os.makedirs(root + "/proc", 0o755)
    try:  # a /proc that shows only this namespace's processes (else /proc stays empty)
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        child["proc"] = True
    except OSError:
        pass
    os.chdir(root)
    machine = os.uname().machine
    if machine not in PIVOT_ROOT:
        raise OSError(0, "pivot_root: syscall number unknown on " + machine)
    # pivot_root(".", ".") stacks the old root on the new one; detaching "." then drops the old root
    check(libc.syscall(ctypes.c_long(PIVOT_ROOT[machine]), b".", b"."), "pivot_root")
    check(libc.umount2(b".", ctypes.c_int(2)), "umount2(old root, MNT_DETACH)")
    os.chdir("/")
    try:
        set_readonly("/", True, True)
        set_readonly(workdir, False, False)
    except OSError as e:
        if e.errno != 38:  # ENOSYS: a kernel before 5.12 remounts mount by mount (submounts stay as they are)
            raise
        for path in ["/"] + binds:
            keep = os.statvfs(path).f_flag & KEEP
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
    os.chdir(workdir)

def first_blocker(path):
    # the outermost directory on the path that "other" users cannot traverse (e.g. /root, 0700)
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None

os.umask(0o022)
if mode != "none":
    try:
        enter_namespaces()
    except Exception as e:
        report(refused="%s: %s" % (type(e).__name__, e), **iso)
        os._exit(126)

pid = os.fork()
if pid == 0:
    try:
        # Here, as PID 1 of the new PID namespace: a /proc of this namespace can only be mounted by a
        # process in it, and (in a user namespace) only while the host's /proc is still visible, so
        # the file system is built here, not before the fork.
        child = {"proc": False}
        if mode != "none":
            try:
                setup_fs(cfg["workdir"], cfg["expose"], cfg["hide"], child)
                iso["readonly_fs"] = True
            except Exception as e:
                report(refused="%s: %s" % (type(e).__name__, e), **iso)
                os._exit(126)
        report(**iso)
        lim = cfg["limits"]
        for res, value in ((resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_AS, lim["memory_bytes"]),
                           (resource.RLIMIT_NPROC, lim["max_processes"]),
                           (resource.RLIMIT_FSIZE, lim["file_size_bytes"]),
                           (resource.RLIMIT_NOFILE, lim["open_files"]), (resource.RLIMIT_CORE, 0)):
            # CPU: soft limit sends SIGXCPU, the hard limit one second later SIGKILL
            resource.setrlimit(res, (value, value + 1 if res == resource.RLIMIT_CPU else value))
        uid = cfg["uid"]
        if uid is not None and mode == "none" and any(first_blocker(d) for d in cfg["expose"]):
            # without our file system the sandbox uid could not even start the interpreter (e.g.
            # pyenv under /root, mode 0700): keep the uid and say so
            child["uid_skipped"] = "the interpreter is unreachable for an unprivileged uid without a mount namespace"
            uid = None
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL (after the uid change, which clears it)
        child["uid"] = os.getuid()
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


def _remove_tree(path: str) -> None:
    """``rmtree`` that first gives back the permissions the program may have taken from its own
    directories (without root, a ``chmod 000`` subdirectory could not be emptied). Symlinks are
    never followed: chmod through one could change a file outside."""
    try:
        os.chmod(path, 0o700)
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def _exposed_paths(executable: str) -> list[str]:
    """Host paths bound read-only into the sandbox's file system: the system directories and the
    base interpreter's tree (real paths), none inside another."""
    trees = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(executable))}
    paths = sorted({*(p for p in _SYSTEM_PATHS if os.path.lexists(p)), *_DEVICES, *trees})
    dirs = [p for p in paths if os.path.isdir(p) and not os.path.islink(p)]
    return [p for p in paths if os.path.lexists(p) and not any(p.startswith(d + "/") for d in dirs)]


def _site_dirs() -> list[str]:
    """Every site-packages directory of the base interpreter and of a virtual environment: emptied
    in the sandbox, so installed packages (and data sets shipped as packages) stay out of reach."""
    dirs = set(site.getsitepackages([sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]))
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    dirs |= {paths["purelib"], paths["platlib"]}
    return sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})


# Which containment works here, probed once per process: (mode or None, why the others failed).
_PROBED: dict[tuple, tuple[str | None, str]] = {}
_PROBE_LOCK = threading.Lock()


class Sandbox:
    """Runs untrusted Python programs under ``limits``; ``run_many`` runs them on a pool of
    ``workers`` threads (default: the CPUs this process may use), one subprocess each.

    The constructor finds how to contain the programs here (root: namespaces and a sandbox uid;
    otherwise a user namespace) by running an empty program, once per process. Where nothing works
    it raises :class:`SandboxUnavailable`, unless ``allow_unsandboxed`` (default: the environment
    variable ``CREDIT_ALLOW_UNSANDBOXED=1``) says to run with resource limits only.
    ``namespaces=False`` runs with resource limits only, on purpose."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None, namespaces: bool = True,
                 allow_unsandboxed: bool | None = None):
        self.limits = limits or Limits()
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        self.namespaces = namespaces
        if allow_unsandboxed is None:
            allow_unsandboxed = os.environ.get(ALLOW_UNSANDBOXED_ENV, "") == "1"
        self.allow_unsandboxed = allow_unsandboxed
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # The base interpreter, not a virtual environment's: the venv's packages stay out of reach.
        self._python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        self._expose = _exposed_paths(self._python)
        self._hide = _site_dirs()
        self.mode = self._containment() if namespaces else "none"

    def _containment(self) -> str:
        """The first mode whose empty program runs contained; else "none" if the user opted in."""
        modes = ("root", "userns") if os.geteuid() == 0 else ("userns",)
        key = (modes, self._python)
        with _PROBE_LOCK:
            if key not in _PROBED:
                found, why = None, []
                for mode in modes:
                    try:
                        r = self._run(mode, "pass", "", None, Limits())
                    except SandboxUnavailable as e:
                        why.append(f"{mode}: {e}")
                        continue
                    if r.status == "ok":
                        found = mode
                        break
                    why.append(f"{mode}: the empty program ended {r.status}: {r.stderr.strip()[-200:]}")
                _PROBED[key] = (found, "; ".join(why))
            found, why = _PROBED[key]
        if found is not None:
            return found
        message = (f"cannot contain model-written code here ({why}); run as root, enable unprivileged user "
                   "namespaces (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1, "
                   "kernel.apparmor_restrict_unprivileged_userns=0), or set "
                   f"{ALLOW_UNSANDBOXED_ENV}=1 to run it with resource limits only")
        if not self.allow_unsandboxed:
            raise SandboxUnavailable(message)
        warnings.warn(f"{ALLOW_UNSANDBOXED_ENV}: model-written code runs UNCONTAINED, with resource limits "
                      f"only: {why}", RuntimeWarning, stacklevel=3)
        return "none"

    # -- one run -----------------------------------------------------------------------------

    def run(self, code: str, stdin: str = "", files: dict[str, str] | None = None) -> RunResult:
        """Run ``code`` as ``main.py`` with ``stdin`` in a fresh directory holding ``files``."""
        return self._run(self.mode, code, stdin, files, self.limits)

    def _run(self, mode: str, code: str, stdin: str, files: dict[str, str] | None, lim: Limits) -> RunResult:
        # root drops to a sandbox uid; in a user namespace only the user's own uid exists
        uid = _UIDS.acquire() if os.geteuid() == 0 and mode != "userns" else None
        workdir = tempfile.mkdtemp(prefix="credit-sbx-")
        status_r, status_w = os.pipe()
        marker = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        proc, stages, leftover = None, {}, 0
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
                "mode": mode,
                "workdir": workdir,
                "expose": self._expose,
                "hide": self._hide,
                "uid": uid,
                "argv": [self._python, "-I", "main.py"],
                "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                        "HOME": workdir, "TMPDIR": workdir, "PYTHONDONTWRITEBYTECODE": "1",
                        # lets the parent find escaped descendants that outlived the run
                        "CREDIT_SANDBOX_RUN": marker},
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
            out, err, timed_out, truncated = self._collect(proc, start + lim.timeout_s, lim.max_output_bytes)
            wall = time.monotonic() - start
            stages = self._read_status(status_r)
        finally:
            if proc is not None:
                self._kill(proc)  # the session: whatever is left of the launcher and its children
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)
            # Survivors, on every path: a PID namespace should leave none (the kernel kills it with
            # its init), so this measures that; without one it is what ends escaped processes.
            env_marker = f"CREDIT_SANDBOX_RUN={marker}\0".encode()
            leftover = _kill_survivors(lambda pid: (uid is not None and _uid_of(pid) == uid)
                                       or env_marker in _environ_of(pid))
            _remove_tree(workdir)
            if uid is not None and leftover == 0:
                _UIDS.release(uid)  # a uid with survivors is never reused
        if "refused" in stages:
            raise SandboxUnavailable(f"the sandbox could not be set up ({mode}): {stages['refused']}")
        isolation = {k: v for k, v in stages.items() if k not in ("wait_status", "cpu_s", "max_rss_kb")}
        isolation.setdefault("uid", uid if uid is not None else os.getuid())
        isolation["contained"] = mode != "none" and bool(stages.get("readonly_fs"))
        isolation["leftover_processes"] = leftover
        stdout = out.decode("utf-8", errors="replace").replace(workdir + "/", "")
        stderr = err.decode("utf-8", errors="replace").replace(workdir + "/", "")
        returncode, signum = self._exit_of(proc, stages)
        cpu_limit = cfg["limits"]["cpu_s"]
        status = self._status(returncode, signum, stderr, timed_out, truncated, stages, cpu_limit)
        return RunResult(status, returncode, stdout, stderr, wall, isolation, truncated)

    def _collect(self, proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
        """Read stdout and stderr incrementally until both close, the deadline passes, or a stream
        passes the cap; returns (stdout, stderr, timed_out, truncated)."""
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


__all__ = ["ALLOW_UNSANDBOXED_ENV", "STATUSES", "Job", "Limits", "RunResult", "Sandbox", "SandboxUnavailable"]
