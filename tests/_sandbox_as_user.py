"""Runs sandbox jobs as an ordinary user (nobody), for tests/test_sandbox.py, which runs as root.

Started as root, it gives root up for good before it reads a job:

- the interpreter may live under a directory only root may enter (pyenv in /root, mode 0700), and
  so may the checkout with its virtual environment (a clone inside ``mktemp -d``, mode 0700): in a
  private mount namespace an empty tmpfs covers each such directory and the interpreter's tree and
  the virtual environment (its packages and the data they ship) are bound back, so nobody can start
  Python and read the installed files (what a user with their own install has anyway), wherever
  the checkout sits;
- with ``--no-userns`` it first enters an identity-mapped user namespace whose limit on nested user
  namespaces is 0: a machine where an ordinary user cannot create one (a sysctl, AppArmor, seccomp);
- then ``setgroups([])``, ``setresgid``/``setresuid`` to nobody, which clears every capability.

Protocol: one JSON job per stdin line ``{"code", "stdin", "files", "limits", "namespaces", "env"}``;
one JSON line per job on stdout: ``{"result": {RunResult fields}, "warnings": [...]}`` or
``{"error": "Type: message", "warnings": [...]}``. A line ``{"probe": [paths]}`` asks, outside any
sandbox, whether nobody can read each path here: ``{"probe": {path: null or why not}}`` (a test's
check of its own premise).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys
import warnings

from credit.tasks.sandbox import Limits, Sandbox  # imported while the source tree is still readable

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _first_blocker(path: str) -> str | None:
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _enter_identity_userns_without_nesting() -> None:
    """unshare a user namespace; the parent (still root outside) writes the identity map, which
    only a privileged process of the outer namespace may do; then forbid nested user namespaces."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the outer helper: map, then wait for the inner one and exit with its status
        os.close(w)
        os.read(r, 16)  # until our parent has unshared
        inner = os.getppid()
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{inner}/{name}", "w") as f:
                f.write("0 0 4294967295")
        os._exit(0)
    os.close(r)
    _check(libc.unshare(ctypes.c_int(CLONE_NEWUSER)), "unshare(CLONE_NEWUSER)")
    os.write(w, b"go")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert status == 0, "writing the uid map failed"
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def _unreadable(path: str) -> str | None:
    """Why this process cannot read ``path`` (None if it can), naming a directory closed to others."""
    try:
        with open(path, "rb") as f:
            f.read(1)
        return None
    except OSError as e:
        why = f"{e.strerror} (errno {e.errno})"
    try:
        closed = _first_blocker(os.path.dirname(os.path.abspath(path)))
    except OSError:
        closed = None
    if closed is not None:
        st = os.stat(closed)
        why += f"; {closed} (mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}) is closed to other users"
    return why


def _expose_install() -> None:
    _check(libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # the base interpreter, and the virtual environment this helper runs from (sys.prefix)
    prefixes = (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix)
    trees = sorted({os.path.realpath(p) for p in prefixes})
    blocked = {t: _first_blocker(t) for t in trees}
    fds = {t: os.open(t, os.O_PATH | os.O_DIRECTORY) for t, b in blocked.items() if b}
    for b in sorted({b for b in blocked.values() if b}):
        _mount("tmpfs", b, "tmpfs", 0, "mode=755,size=1m")
    for t, fd in fds.items():
        os.makedirs(t, 0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", t, None, MS_BIND | MS_REC)
        os.close(fd)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run me as root: I drop to nobody myself")
    if "--no-userns" in sys.argv:
        _enter_identity_userns_without_nesting()
    _expose_install()
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    os.environ["TMPDIR"] = "/tmp"
    os.chdir("/")
    for line in sys.stdin:
        job = json.loads(line)
        if "probe" in job:
            print(json.dumps({"probe": {p: _unreadable(p) for p in job["probe"]}}), flush=True)
            continue
        os.environ.update(job.get("env", {}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                sb = Sandbox(Limits(**job["limits"]), workers=1, namespaces=job.get("namespaces", True))
                reply = {"result": dataclasses.asdict(sb.run(job["code"], job.get("stdin", ""), job.get("files")))}
            except Exception as e:  # the test judges the message
                reply = {"error": f"{type(e).__name__}: {e}"}
        for key in job.get("env", {}):
            os.environ.pop(key, None)
        reply["warnings"] = [str(w.message) for w in caught]
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
