"""benchmarks/gpu.sh and what it stands on: the import path of a bare GPU machine, Trainers freed between
bench steps, records that survive a timeout, the offline wheel install, the summary's verdict.
The whole script runs in `make gpu-rehearsal` (minutes), not here. No timing assertions."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import weakref
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_bench_path_imports_no_plotting_logging_or_task_packages():
    # what a bare GPU machine lacks: the CLI (every verb's parser), the loop and the bench load without them
    code = ("import sys; from credit.cli import build_parser; build_parser(); import credit.train, credit.analysis.bench; "
            "print(','.join(m for m in ('matplotlib', 'tensorboard', 'torch.utils.tensorboard', 'rich', "
            "'reasoning_gym', 'datasets', 'pyarrow', 'gguf', 'pandas', 'wandb', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_bench_step_frees_its_trainer(tiny_tokenizer, monkeypatch):
    import credit.train
    from credit.analysis.bench import Bench, methods_for

    made = []
    init = credit.train.Trainer.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append((weakref.ref(self), weakref.ref(self.model)))

    monkeypatch.setattr(credit.train.Trainer, "__init__", remember)
    sdpo = [m for m in methods_for((1,), 8, 3) if m.label == "sdpo-token"]
    bench = Bench(model="tiny", prompts=3, samples=3, prompt_len=4, response_len=2, top_k=8, methods=sdpo, threads=1)
    gc.disable()  # no automatic collection: only the step's own can free the Trainer
    try:
        bench.step(sdpo[0])
    finally:
        gc.enable()
        bench.close()
    # the Trainer and its LR scheduler refer to each other: only a collection frees them, and the step runs it
    assert len(made) == 1 and made[0][0]() is None and made[0][1]() is None


def test_bench_cut_by_a_timeout_after_its_second_method_keeps_both_records(tiny_tokenizer, tmp_path):
    """gpu.sh part a, cut the way `timeout` cuts it (SIGTERM) once its second method's step is written."""
    jsonl = tmp_path / "steps.jsonl"
    cmd = [sys.executable, "-m", "credit.cli", "bench", "--model", "tiny", "-B", "3", "-G", "3", "--prompt-len", "4",
           "--response-len", "4", "--ks", "1",
           "--methods", "sdpo-token,credit-token-k1,sdpo-logit,credit-logit-k1,grpo",
           "--top-k", "8", "--repeats", "3", "--warmup", "0", "--threads", "1", "--keep-going",
           "--jsonl", str(jsonl), "--json", str(tmp_path / "steps.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 300
        while sum(r.get("kind") == "step" for r in _safe_records(jsonl)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM  # cut, not finished: 15 steps were asked for
    assert not (tmp_path / "steps.json").exists()  # the summary is written only at the end
    records = _records(jsonl)  # every line whole
    steps = [r for r in records if r["kind"] == "step"]
    assert records[0]["kind"] == "setup" and [s["method"] for s in steps[:2]] == ["sdpo-token", "credit-token-k1"]
    for s in steps[:2]:
        assert s["repeat"] == 1 and s["seconds"]["step"] > 0 and s["tokens"] == 9 * 4 and s["peak_mem_gib"] > 0
    assert steps[1]["seconds"]["negatives"] > 0 and steps[0]["seconds"]["negatives"] == 0
    # the pair's ratio is written with its second member
    assert any(r["kind"] == "ratio" and r["ratio"] == "credit-token-k1/sdpo-token" for r in records)


def _safe_records(path: Path) -> list[dict]:
    """The whole lines written so far (a line being written may be torn)."""
    out = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _wheel(folder: Path, name: str = "credit_fake_pkg") -> Path:
    """A minimal pure-Python wheel holding one module."""
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "__version__ = '1.0'\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.parametrize("pip", [True, False], ids=["pip", "no-pip"])
def test_gpu_env_installs_the_wheelhouse_offline_and_reports_what_does_not_import(tmp_path, monkeypatch, pip):
    gpu_env = _load("gpu_env")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    if not pip:  # an interpreter without pip: the wheels are unpacked instead
        real = gpu_env.subprocess.run
        monkeypatch.setattr(gpu_env.subprocess, "run", lambda cmd, **kw: (
            subprocess.CompletedProcess(cmd, 1) if cmd[1:4] == ["-m", "pip", "--version"] else real(cmd, **kw)))
    site = tmp_path / "site"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(site)]))
    monkeypatch.setattr(gpu_env, "NEEDS", {"credit_fake_pkg": "a", "credit_no_such_module": "e (TRL peer)"})
    out = tmp_path / "env.json"
    assert gpu_env.main(["--wheels", str(wheels), "--target", str(site), "--json", str(out)]) == 0
    env = json.loads(out.read_text())
    assert env["install"]["method"] == ("pip --no-index --no-deps --target" if pip else "unzip")
    assert (site / "credit_fake_pkg" / "__init__.py").is_file() and env["target_on_pythonpath"]
    assert env["imports"]["credit_fake_pkg"] == {"ok": True, "version": "1.0",
                                                 "from": str(site / "credit_fake_pkg" / "__init__.py")}
    assert env["missing"] == {"credit_no_such_module": "e (TRL peer)"}


def test_gpu_summary_counts_records_and_fails_a_part_that_wrote_none(tmp_path, capsys):
    gpu_summary = _load("gpu_summary")
    (tmp_path / "a.jsonl").write_text('{"kind": "setup"}\n{"kind": "step", "seconds": {}}\n{"kind": "ra')  # torn
    (tmp_path / "b.jsonl").write_text('{"kind": "step", "error": "OutOfMemoryError: CUDA out of memory."}\n')
    (tmp_path / "e.jsonl").write_text('{"kind": "trl_peer", "skipped": "trl does not import"}\n')
    rows = [("a", "a.jsonl", 124, 200, 200), ("b", "b.jsonl", 1, 50, 110), ("e", "e.jsonl", 0, 0, 20)]
    (tmp_path / "parts.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    assert gpu_summary.main([str(tmp_path), "--require-measured", "a"]) == 0
    parts = json.loads((tmp_path / "summary.json").read_text())["parts"]
    assert parts["a"] == {"jsonl": "a.jsonl", "exit": 124, "seconds": 200, "limit_s": 200, "timed_out": True,
                          "records": 1, "measured": 1, "errors": 0, "skipped": 0, "torn": 1}
    assert (parts["b"]["errors"], parts["e"]["skipped"]) == (1, 1)
    assert gpu_summary.main([str(tmp_path), "--require-measured", "a,b"]) == 1  # b measured nothing
    (tmp_path / "parts.tsv").write_text("d\tmissing.jsonl\t1\t3\t30\n")
    assert gpu_summary.main([str(tmp_path)]) == 1
    assert "part(s) d wrote no record" in capsys.readouterr().out


def test_gpu_sh_is_valid_bash():
    subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu.sh")], check=True)
