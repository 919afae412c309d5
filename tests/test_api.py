"""``credit.fit``: training from Python with a reward callable and in-memory rows (credit/api.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

import credit
from credit.cli import main
from credit.errors import UserError

BASE = ["device=cpu", "steps=1", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=4", "optim.micro_batch=4", "log.progress=false", "eval.before=false",
        "eval.samples=1", "checkpoint_every=1", "threads=null"]
ROWS = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(1, 5) for b in range(1, 5)]
calls: list[int] = []


def reward(prompts, responses, examples):
    """Importable from this module: config.yaml records it as ``test_api:reward``."""
    calls.append(len(responses))
    return [(float(ex["answer"] in r), f"The answer is {ex['answer']}.") for r, ex in zip(responses, examples)]


def test_fit_trains_with_a_callable_and_rows_and_the_run_records_them(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run = credit.fit(None, reward=reward, train_data=ROWS[:12], eval_data=ROWS[12:],
                     overrides=[f"model.name={tiny_model_dir}", f"out_dir={out}", *BASE])
    assert calls, "the reward function was never called"
    assert run.run_dir == out and (out / "final" / "config.json").is_file()
    assert run.summary["eval_after"]["num_items"] == 4  # eval_data, not a hold-out of train_data
    assert hasattr(run.model, "generate") and run.tokenizer is not None
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["task"] == {"name": "prompts", "options": {
        "path": str(out / "data" / "train.jsonl"), "test_path": str(out / "data" / "test.jsonl"),
        "reward": f"{reward.__module__}:reward"}}
    assert [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()] == ROWS[:12]

    # the recorded name finds the function again: the command line resumes the run (one more step)
    assert main(["train", str(out / "config.yaml"), "--resume", "steps=2"]) == 0
    # other rows than the run's are refused on resume
    with pytest.raises(UserError, match="train_data differs from the rows this run was trained on"):
        credit.fit(None, reward=reward, train_data=ROWS[:10], eval_data=ROWS[12:], resume=True,
                   overrides=[f"model.name={tiny_model_dir}", f"out_dir={out}", *BASE, "steps=3"])


def test_a_scripts_function_is_refused_by_the_cli_resume_and_continues_from_python(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    scope = {"__name__": "__main__"}  # as a function defined in a user's script
    exec("def my_reward(prompts, responses, examples):\n    return [float('5' in r) for r in responses]\n", scope)
    args = dict(reward=scope["my_reward"], train_data=ROWS, overrides=[f"model.name={tiny_model_dir}",
                                                                       f"out_dir={out}", *BASE])
    credit.fit(None, **args)
    assert yaml.safe_load((out / "config.yaml").read_text())["task"]["options"]["reward"] == "__main__:my_reward"
    assert main(["train", str(out / "config.yaml"), "--resume", "steps=2"]) == 2
    err = capsys.readouterr().err
    assert "given from Python" in err and "resume=True" in err and "Traceback" not in err
    run = credit.fit(None, resume=True, **{**args, "overrides": [*args["overrides"], "steps=2"]})
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()
            if '"step"' in r][-1] >= 1 and run.summary.get("resumed_from_step") == 1


def test_fit_refuses_what_it_cannot_take(tmp_path):
    with pytest.raises(UserError, match="list of dicts"):
        credit.fit(None, reward=reward, train_data="rows.jsonl", overrides=[f"out_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"train_data\[1\] is a str"):
        credit.fit(None, reward=reward, train_data=[{"prompt": "x"}, "y"], overrides=[f"out_dir={tmp_path}"])
    with pytest.raises(UserError, match="reward must be a callable"):
        credit.fit(None, reward="mod:fn", train_data=ROWS, overrides=[f"out_dir={tmp_path}"])


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's example, executed as a user's script (``__main__``), on the offline default model."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "configs").mkdir()
    shutil.copy(Path(__file__).parents[1] / "configs" / "quickstart.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), scope)
    run = scope["run"]
    assert (tmp_path / run.run_dir / "final").is_dir() and "eval_after" in run.summary


def contains_five(prompts, responses, examples):
    return [float("5" in r) for r in responses]


def test_what_a_user_watches_is_logged(tiny_model_dir, tmp_path):
    """Entropy of the sampling policy, the reward's spread, each reward function's own mean, and the
    sampled rollouts as text in TensorBoard (issue 27 item 7)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    credit.fit(None, reward=[reward, contains_five], train_data=ROWS,
               overrides=[f"model.name={tiny_model_dir}", f"out_dir={out}", *BASE, "log.tensorboard=true"])
    row = next(json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"policy/entropy"' in r)
    assert row["policy/entropy"] > 0
    assert 0 <= row["task/reward_std"] <= 1 and row["task/reward_std"] >= 0
    mod = reward.__module__
    both = row[f"task/reward/{mod}:reward"] + row[f"task/reward/{mod}:contains_five"]
    assert both == pytest.approx(row["task/reward_mean"])  # weights 1: the total is the sum of the parts
    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0}).Reload()
    text = events.Tensors("rollouts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| prompt | response | reward | feedback |") and "What is" in text


def test_a_datasets_dataset_is_taken_as_its_rows():
    from datasets import Dataset

    from credit.api import _rows

    assert _rows(Dataset.from_list(ROWS), "train_data") == ROWS


def test_two_runs_of_different_precision_in_one_process(tiny_model_dir, tmp_path):
    """A notebook calls fit twice: bf16, then fp32 (accelerate's global state used to refuse the second)."""
    for dtype in ("bfloat16", "float32"):
        run = credit.fit(None, reward=reward, train_data=ROWS, overrides=[
            f"model.name={tiny_model_dir}", f"out_dir={tmp_path / dtype}", *BASE, f"model.dtype={dtype}"])
        assert run.summary["eval_after"]["num_items"] > 0
