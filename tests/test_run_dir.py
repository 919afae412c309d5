"""What a new user trips on in out_dir (issue 27, items 5 and 6): an unwritable out_dir is named before
any model loads; a run that failed before its first step leaves nothing that blocks the retry;
``--overwrite`` deletes only the files a run writes."""

import errno
import json
import sys
from pathlib import Path

import pytest

import credit.train as train_mod
from credit import runs
from credit.cli import main
from credit.errors import UserError

BASE = ["device=cpu", "steps=1", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=4", "optim.micro_batch=4", "log.progress=false", "eval.before=false",
        "eval.limit=1", "eval.samples=1", "checkpoint_every=0"]


def train_args(model_dir, out, *extra):
    return ["train", f"model.name={model_dir}", f"out_dir={out}", *BASE, *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.startswith("credit train:")]
    assert len(lines) == 1 and lines[0].startswith("credit train: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before out_dir was checked")

    monkeypatch.setattr(train_mod, "load_model", refuse)


# ----------------------------------------------------------------------------- item 5: out_dir not writable


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_out_dir_that_cannot_be_made_is_named_before_the_model_loads(tiny_model_dir, no_model_load, capsys):
    assert main(train_args(tiny_model_dir, "/proc/credit_run")) == 2
    line = error_line(capsys)
    assert "out_dir=/proc/credit_run cannot be written: No such file or directory" in line


def test_a_read_only_out_dir_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(UserError, match=r"out_dir=.*/new/run cannot be written: Read-only file system \(.*"
                                        r"\.credit-write-check\.\d+\.tmp\); set out_dir"):
        runs.prepare_run_dir(tmp_path / "new" / "run", resume=False, overwrite=False)
    assert not (tmp_path / "new").exists()  # the folders made for the check are gone again
    monkeypatch.undo()
    runs.prepare_run_dir(tmp_path / "new" / "run", resume=False, overwrite=False)
    assert list((tmp_path / "new" / "run").iterdir()) == []  # a writable one: made, and no probe left in it


# ----------------------------------------------------------------------------- item 6: stubs and --overwrite


def test_empty_logs_are_no_run_and_a_logged_line_is(tmp_path):
    for name in ("metrics.jsonl", "rollouts.jsonl", "config.yaml"):
        (tmp_path / name).write_text("")
    (tmp_path / "tb").mkdir()
    runs.prepare_run_dir(tmp_path, resume=False, overwrite=False)  # the stub of a failed start: no run
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval/mean@4": 0.25}\n')
    with pytest.raises(UserError, match=r"already holds a run \(metrics.jsonl\)"):
        runs.prepare_run_dir(tmp_path, resume=False, overwrite=False)


def test_a_raising_reward_leaves_nothing_that_blocks_the_retry(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {i} + 1?", "a": str(i + 1)}) + "\n" for i in range(6)))
    (tmp_path / "bad.py").write_text("def reward(prompts, responses, examples):\n    raise KeyError('answer')\n")
    (tmp_path / "good.py").write_text("def reward(prompts, responses, examples):\n    return [0.0] * len(responses)\n")
    out = tmp_path / "run"

    def task(reward):
        return f"task={{name: prompts, options: {{path: {data}, prompt_field: q, reward: {tmp_path / reward}:reward}}}}"

    with pytest.raises(Exception, match="raised KeyError"):
        main(train_args(tiny_model_dir, out, task("bad.py")))
    assert (out / "metrics.jsonl").read_text() == ""  # the stub: empty logs, tb/
    capsys.readouterr()
    assert main(train_args(tiny_model_dir, out, task("good.py"))) == 0, capsys.readouterr().err
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()][-1] == 1


def test_wandb_missing_is_found_before_any_file_and_the_retry_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import credit.train

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    out = tmp_path / "run"
    with monkeypatch.context() as m:  # found before minutes of model loading: no model may load
        m.setattr(credit.train, "load_model", lambda *a, **k: pytest.fail("the model loaded before wandb was checked"))
        assert main(train_args(tiny_model_dir, out, "log.wandb=true")) == 2
    assert "log.wandb=true needs the wandb package" in error_line(capsys)
    assert not (out / "metrics.jsonl").exists()
    assert main(train_args(tiny_model_dir, out, "log.tensorboard=false")) == 0, capsys.readouterr().err


def test_overwrite_deletes_only_the_files_a_run_writes(tmp_path, capsys):
    for name in ("metrics.jsonl", "summary.json", "config.yaml", "checkpoint.pt", ".summary.json.tmp"):
        (tmp_path / name).write_text("x")
    for d, files in {"tb": ["events.out.tfevents.1.host", "my.txt"], "checkpoints": ["step-000002.pt"],
                     "final": ["config.json", "model.safetensors", "tokenizer.json", "notes.md"]}.items():
        (tmp_path / d).mkdir()
        for f in files:
            (tmp_path / d / f).write_text("x")
    (tmp_path / "notes.md").write_text("mine")
    removed = runs.clear_run(tmp_path)
    assert "checkpoints" in removed and "tb/events.out.tfevents.1.host" in removed and "final/config.json" in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "notes.md", "tb"]
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["my.txt"]
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["notes.md"]
    assert "kept final/notes.md, tb/my.txt" in capsys.readouterr().err
