"""Every user error of the CLI is one line, ``credit <cmd>: error: ...``, exit status 2, no traceback;
``--model`` of eval/explain/pmi takes a run directory or a checkpoint file; ``--help-config`` lists the
tasks and their options; ``--version``; the Hub is not switched off by the CLI."""

import importlib.metadata
import os
import shutil

import pytest
import torch

from credit import checkpoint
from credit.cli import main
from credit.tasks import TASKS

BASE = ["device=cpu", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "optim.micro_batch=12", "log.progress=false", "log.tensorboard=false", "eval.before=false", "eval.limit=2",
        "eval.samples=1"]


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"credit {command}: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A finished one-step run of the tiny model (final/, checkpoint.pt, rollouts.jsonl)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", f"model.name={tiny_model_dir}", f"out_dir={out}", *BASE, "steps=1", "optim.lr=0.05"]) == 0
    return out


def test_train_prints_before_and_after_and_never_nan(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"model.name={tiny_model_dir}", f"out_dir={out}", *BASE, "steps=1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("held-out mean@1: not measured (eval.before: false) -> ") and "nan" not in line, line


@pytest.mark.parametrize("argv, expected", [
    (["train", "optim.lrr=1e-4"], "optim.lrr: unknown key; did you mean `optim.lr`?"),
    (["train", "learning_rate=1e-4"], "did you mean `optim.lr`?"),
    (["train", "credit.lamda=0.3"], "did you mean `credit.lam`?"),
    (["train", "--resume", "/nonexistent/checkpoint.pt"], "--resume /nonexistent/checkpoint.pt: no such checkpoint"),
    (["bench", "--repeats", "0"], "--repeats=0: must be >= 1"),
])
def test_config_and_option_errors_are_one_line(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in error_line(capsys, argv[0])


def test_an_unknown_task_option_lists_the_allowed_ones(tiny_model_dir, tmp_path, capsys):
    # was a TypeError traceback from the task's constructor
    assert main(["train", f"model.name={tiny_model_dir}", f"out_dir={tmp_path}", *BASE,
                 "task.options={answer_feedbak: true}"]) == 2
    line = error_line(capsys, "train")
    assert "task 'addition' has no option 'answer_feedbak'" in line and "answer_feedback" in line and "low" in line
    assert main(["eval", "--model", tiny_model_dir, "--task", "addition", "--task-option", "hihg=3"]) == 2
    assert "no option 'hihg'; its options: low, high" in error_line(capsys, "eval")


def test_model_paths_that_cannot_be_a_model_say_what_to_do(tiny_model_dir, tmp_path, run_dir, capsys):
    # a missing path was an OSError traceback; an empty directory asked to install sentencepiece
    assert main(["train", "model.name=/nonexistent/model", f"out_dir={tmp_path / 'a'}", *BASE]) == 2
    assert "/nonexistent/model: no such directory; give a Hugging Face id" in error_line(capsys, "train")
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--model", str(tmp_path / "empty")]) == 2
    assert "is an empty directory, not a model folder" in error_line(capsys, "eval")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert main(["pmi", "--model", str(tmp_path / "notes")]) == 2
    assert "is a directory without config.json" in error_line(capsys, "pmi")
    assert main(["train", f"model.name={run_dir}", f"out_dir={tmp_path / 'b'}", *BASE]) == 2
    assert f"is a credit run directory, not a model folder: give {run_dir / 'final'}" in error_line(capsys, "train")


def test_an_uncached_hub_id_while_offline_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "--model", "credit-tests/not-a-cached-model"]) == 2
    line = error_line(capsys, "eval")
    assert "not in the Hugging Face cache" in line or "nor in the Hugging Face cache" in line
    assert "hf download credit-tests/not-a-cached-model" in line and "HF_HUB_OFFLINE" in line


def test_the_cli_does_not_force_offline_mode(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["train", "--help-config"]) == 0
    assert "HF_HUB_OFFLINE" not in os.environ


def test_report_out_onto_an_existing_file(run_dir, tmp_path, capsys):
    target = tmp_path / "report.html"
    target.write_text("keep me")
    assert main(["report", str(run_dir), "--out", str(target)]) == 2  # was a FileExistsError traceback
    assert f"--out {target}: a file is there; give a directory" in error_line(capsys, "report")
    assert target.read_text() == "keep me"


def test_help_config_lists_every_task_with_its_options(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr = 1e-05" in out and "checkpoint_keep = 1" in out and "log.wandb_project = 'credit'" in out
    for name in TASKS:
        assert f"\n  {name}: " in out, name
    assert "addition: low=1, high=20" in out and "humaneval: path=None, seed=0, test_fraction=0.2" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"credit {importlib.metadata.version('credit-distill')}"


# ----------------------------------------------------------------------------- --model of a run


def test_model_argument_takes_a_run_directory_or_a_checkpoint(run_dir, tmp_path, tiny_model_dir, capsys):
    import argparse

    from credit.analysis.runfiles import load_model_from_args, model_source

    assert model_source(str(run_dir)) == ("model", str(run_dir / "final"))
    partial = tmp_path / "in-progress"  # a run without final/ yet: its checkpoint
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("final"))
    assert model_source(str(partial)) == ("checkpoint", str(partial / "checkpoint.pt"))
    assert model_source(str(run_dir / "checkpoint.pt")) == ("checkpoint", str(run_dir / "checkpoint.pt"))

    trained = checkpoint.load(run_dir)["model"]
    base = load_model_from_args(argparse.Namespace(model=tiny_model_dir, dtype="float32", device="cpu"))[0].state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in trained)  # so "equal to trained" below means something
    for spec in (run_dir, partial, run_dir / "checkpoint.pt"):
        model, _ = load_model_from_args(argparse.Namespace(model=str(spec), dtype="float32", device="cpu"))
        state = model.state_dict()
        assert all(torch.equal(state[k], trained[k]) for k in trained), spec
    capsys.readouterr()
    assert main(["eval", "--model", str(partial), "--task", "addition", "-n", "1", "--limit", "2",
                 "--max-new-tokens", "4"]) == 0
    assert f"using {partial / 'checkpoint.pt'}" in capsys.readouterr().err
    assert main(["pmi", "--model", str(run_dir), "--rollouts", str(run_dir / "rollouts.jsonl"), "--limit", "2"]) == 0


def test_resume_takes_an_optional_path_without_swallowing_the_config(run_dir, tiny_model_dir, tmp_path, capsys):
    import yaml

    config = tmp_path / "run.yaml"
    overrides = dict(item.split("=", 1) for item in BASE)
    config.write_text(yaml.safe_dump({"model": {"name": tiny_model_dir}, "out_dir": str(run_dir), "steps": 1}))
    # `--resume run.yaml`: the YAML is the config, not a checkpoint; the finished run says how to go on
    assert main(["train", "--resume", str(config), *(f"{k}={v}" for k, v in overrides.items())]) == 2
    line = error_line(capsys, "train")
    assert f"the run in {run_dir} is complete at step 1" in line and "steps=2" in line


def test_overrides_may_follow_a_flag(monkeypatch, capsys):
    """`credit train CONFIG --overwrite steps=2`, as users type it: the overrides after the flag are overrides
    (argparse alone refuses them); anything else after the flags is still an error."""
    import credit.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_train", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", "c.yaml", "seed=3", "--overwrite", "steps=2", "log.progress=false"]) == 0
    assert seen["config"] == "c.yaml" and seen["overwrite"]
    assert seen["overrides"] == ["seed=3", "steps=2", "log.progress=false"]
    for extra in (["--bogus"], ["steps=2", "stray"]):
        with pytest.raises(SystemExit):
            main(["train", "c.yaml", "--overwrite", *extra])
        assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other commands take no overrides
        main(["eval", "--model", "m", "steps=2"])
