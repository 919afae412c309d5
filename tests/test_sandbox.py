"""The sandbox against a hostile corpus (SPEC.md §2): every program ends within its limit plus a
small margin, leaves no process behind, and leaves the parent and the file system untouched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from credit.tasks.sandbox import Job, Limits, Sandbox

TIMEOUT = 2.0
MARGIN = 1.5  # launcher start, kill and clean-up


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(Limits(timeout_s=TIMEOUT, memory_mb=512, max_processes=16)) as sb:
        yield sb


def _procs_matching(token: str) -> list[int]:
    """Processes whose command line contains ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _procs_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    text = f.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in ("Z", "X"):
                found.append(int(entry))
    return found


def _assert_contained(result):
    """Ended in time and left nothing running."""
    assert result.wall_s < TIMEOUT + MARGIN, result
    assert result.isolation["leftover_processes"] == 0
    uid = result.isolation["uid"]
    if uid != os.getuid():  # a dedicated sandbox uid: nothing of it may survive
        assert _procs_of_uid(uid) == []


def test_isolation_is_reported(sandbox):
    r = sandbox.run("print('hello')")
    assert (r.status, r.returncode, r.stdout) == ("ok", 0, "hello\n")
    for key in ("netns", "pidns", "mntns", "readonly_fs", "uid", "leftover_processes"):
        assert key in r.isolation
    if os.geteuid() == 0:  # as root the program always runs under a dedicated, unprivileged uid
        assert r.isolation["uid"] not in (0, os.getuid())


def test_infinite_loop_times_out(sandbox):
    r = sandbox.run("while True:\n    pass\n")
    assert r.status == "timeout"
    assert TIMEOUT <= r.wall_s
    _assert_contained(r)


def test_sleeping_program_times_out_on_wall_clock(sandbox):
    r = sandbox.run("import time\ntime.sleep(60)\n")  # no CPU used: only the wall clock can stop it
    assert r.status == "timeout"
    _assert_contained(r)


def test_fork_bomb(sandbox):
    token = f"credit-forkbomb-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        f"            os.execv(sys.executable, [sys.executable, '-c', 'import os\\nwhile 1: os.fork()', {token!r}])\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = sandbox.run(code)
    assert r.status in ("timeout", "error", "killed")
    _assert_contained(r)
    time.sleep(0.1)
    assert _procs_matching(token) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_memory_bomb(sandbox):
    r = sandbox.run("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))\n")
    assert r.status == "oom"
    _assert_contained(r)


def test_stdout_flood_is_capped(sandbox):
    r = sandbox.run("import sys\nchunk = 'x' * 2**20\nfor _ in range(100):\n    sys.stdout.write(chunk)\n")
    assert r.status == "killed" and r.output_truncated
    assert len(r.stdout) <= sandbox.limits.max_output_bytes
    _assert_contained(r)


def test_stderr_flood_is_capped(sandbox):
    r = sandbox.run("import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n")
    assert r.status == "killed" and r.output_truncated
    assert len(r.stderr) <= sandbox.limits.max_output_bytes
    _assert_contained(r)


def test_cannot_kill_parent_or_other_processes(sandbox):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        code = (
            "import os, signal\n"
            "for pid in (os.getppid(), %d, %d, 1, -1):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError as e:\n"
            "        print('refused', pid, e.errno)\n" % (os.getpid(), victim.pid)
        )
        r = sandbox.run(code)
        _assert_contained(r)
        assert victim.poll() is None  # still running
        os.kill(os.getpid(), 0)  # and so are we
    finally:
        victim.kill()
        victim.wait()


def test_files_outside_the_working_directory_are_untouched(sandbox, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("precious")
    escape = f"/tmp/credit-escape-{uuid.uuid4().hex}"
    code = (
        "import os, shutil\n"
        f"for action in (lambda: os.remove({str(canary)!r}), lambda: open({str(canary)!r}, 'w').write('gone'),\n"
        f"               lambda: open({str(tmp_path / 'new.txt')!r}, 'w').write('x'),\n"
        f"               lambda: open({escape!r}, 'w').write('x'), lambda: shutil.rmtree({str(tmp_path)!r}),\n"
        "               lambda: open('/etc/credit-escape', 'w').write('x')):\n"
        "    try:\n"
        "        action()\n"
        "        print('DID IT')\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
        "open('inside.txt', 'w').write('allowed')\n"
        "print(open('inside.txt').read(), os.getcwd())\n"
    )
    r = sandbox.run(code)
    assert r.status == "ok", r.stderr
    assert "DID IT" not in r.stdout and "allowed" in r.stdout
    assert canary.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert not os.path.exists(escape) and not os.path.exists("/etc/credit-escape")
    workdir = r.stdout.split()[-1]
    assert not os.path.exists(workdir)  # the fresh working directory was removed
    _assert_contained(r)


def test_file_size_limit(sandbox):
    r = sandbox.run("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * 2**20)\n")
    assert r.status == "error" and "File too large" in r.stderr
    _assert_contained(r)


def test_no_network_to_localhost(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    r = sandbox.run(code)
    server.settimeout(0.1)  # a completed handshake waits in the backlog even if nobody accepted
    try:
        server.accept()
        arrived = True
    except OSError:
        arrived = False
    server.close()
    _assert_contained(r)
    if not r.isolation["netns"]:
        pytest.skip(f"no network namespace here (isolation={r.isolation}); only the limits hold")
    assert "CONNECTED" not in r.stdout and not arrived


def test_deep_recursion(sandbox):
    r = sandbox.run("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n")
    # RecursionError, a C stack overflow (SIGSEGV), the memory limit, or the clock: never "ok", never a hang
    assert r.status in ("error", "killed", "oom", "timeout")
    _assert_contained(r)


def test_environment_is_cleared(sandbox, monkeypatch):
    monkeypatch.setenv("CREDIT_TEST_SECRET", "s3cr3t-value")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
    )
    r = sandbox.run(code)
    assert r.status == "ok", r.stderr
    assert "s3cr3t-value" not in r.stdout + r.stderr
    _assert_contained(r)


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
def test_background_process_does_not_outlive_the_run(sandbox, namespaces):
    """A double-forked, setsid daemon escapes the process group; the PID namespace (or, without one,
    the sweep over the sandbox uid / the run's environment marker) still ends it."""
    token = f"credit-daemon-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        for fd in (0, 1, 2):\n"
        "            os.close(fd)\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
        "    os._exit(0)\n"
        "print('parent exits')\n"
    )
    sb = sandbox if namespaces else Sandbox(sandbox.limits, namespaces=False)
    r = sb.run(code)
    assert r.status == "ok" and "parent exits" in r.stdout
    assert r.isolation["pidns"] is namespaces or not namespaces
    _assert_contained(r)
    deadline = time.monotonic() + 1.0
    while _procs_matching(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _procs_matching(token) == []


def test_signal_to_own_process_group_spares_parent(sandbox):
    r = sandbox.run("import os, signal\nos.killpg(0, signal.SIGKILL)\n")
    _assert_contained(r)
    os.kill(os.getpid(), 0)


def test_run_many_keeps_order_and_runs_in_parallel():
    with Sandbox(Limits(timeout_s=5.0), workers=2) as sb:
        start = time.monotonic()
        jobs = [Job("import time\ntime.sleep(0.5)\nprint(input())", stdin=f"{i}\n") for i in range(4)]
        results = sb.run_many(jobs)
        elapsed = time.monotonic() - start
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert elapsed < 4 * 0.5 + 1.0  # two at a time: ~1 s, sequential would be 2 s plus start-up


def test_files_and_stdin_reach_the_program(sandbox):
    r = sandbox.run("print(open('data.txt').read().strip(), input())", stdin="from-stdin\n",
                    files={"data.txt": "from-file"})
    assert r.stdout == "from-file from-stdin\n"


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=8)
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)


def test_sigxcpu_or_wall_clock_whichever_first():
    # CPU limit below the wall clock: the CPU rlimit stops it (status timeout either way)
    with Sandbox(Limits(timeout_s=5.0, cpu_s=1)) as sb:
        r = sb.run("while True:\n    pass\n")
    assert r.status == "timeout" and r.wall_s < 5.0
