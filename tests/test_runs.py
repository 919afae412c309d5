"""Run directories: an existing run is never lost, a resume checks the config and applies what it can,
checkpoints rotate atomically, the best one is kept, a torn log line is survivable, signals only set a
flag; W&B names and a merged LoRA export."""

import json
import os
import signal
import sys
import types
from pathlib import Path

import pytest
import torch

import credit.evaluate
import credit.train as train_mod
from credit import checkpoint, runs
from credit.cli import main
from credit.config import load_config
from credit.errors import SetupError, UserError

BASE = ["device=cpu", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "optim.micro_batch=12", "optim.lr=1e-3", "log.progress=false", "log.tensorboard=false", "eval.before=false",
        "eval.limit=2", "eval.samples=1"]


def train_args(tiny_model_dir, out, *extra):
    return ["train", f"model.name={tiny_model_dir}", f"out_dir={out}", *BASE, *extra]


def one_error_line(capsys, command="train") -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.startswith(f"credit {command}:")]
    assert len(lines) == 1 and lines[0].startswith(f"credit {command}: error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- the run directory


def test_an_existing_run_is_refused_with_the_fix(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(UserError, match=r"already holds a run \(metrics.jsonl\).*--resume.*--overwrite.*out_dir="):
        runs.prepare_run_dir(tmp_path, resume=False, overwrite=False)
    runs.prepare_run_dir(tmp_path, resume=True, overwrite=False)
    runs.prepare_run_dir(tmp_path, resume=False, overwrite=True)
    with pytest.raises(UserError, match="contradict"):
        runs.prepare_run_dir(tmp_path, resume=True, overwrite=True)
    runs.prepare_run_dir(tmp_path / "new", resume=False, overwrite=False)  # nothing there: fine


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    for name in ("metrics.jsonl", "summary.json", "config.yaml", "checkpoint.pt", ".summary.json.tmp"):
        (tmp_path / name).write_text("x")
    for d, f in (("final", "model.safetensors"), ("checkpoints", "step-000001.pt"), ("tb", "events.out.tfevents.1")):
        (tmp_path / d).mkdir()
        (tmp_path / d / f).write_text("x")
    (tmp_path / "checkpoints" / "step-000001.shards").mkdir()  # a sharded run's: every rank's shards
    (tmp_path / "checkpoints" / "step-000001.shards" / "__0_0.distcp").write_text("x")
    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("mine")
    removed = runs.clear_run(tmp_path)
    assert "metrics.jsonl" in removed and "final" in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.md"]
    assert (tmp_path / "data" / "train.jsonl").read_text() == "mine"


def test_trim_jsonl_drops_a_torn_last_line_and_names_a_bad_middle_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n{"step": 2, "a": 3}\n{"step": 3, "a"')
    assert runs.trim_jsonl(path, 2) == 2  # step 2 (after the checkpoint) and the torn line
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [0, 1]
    assert "metrics.jsonl:4: dropped a torn last line" in capsys.readouterr().err
    path.write_text('{"step": 0}\n{"step": 1\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a metrics row"):
        runs.trim_jsonl(path, 5)


# ----------------------------------------------------------------------------- the config at resume


def test_reconcile_refuses_what_cannot_apply_and_lists_what_does(tmp_path):
    saved = load_config(None, ["model.lora={r: 4}"]).model_dump(mode="json")
    same = runs.reconcile(saved, saved, tmp_path)
    assert same == []
    applied = runs.reconcile(saved, load_config(None, ["model.lora={r: 4, dropout: 0.1}", "optim.lr=0.5",
                                                       "credit.lam=0.2", "out_dir=elsewhere"]).model_dump(mode="json"),
                             tmp_path)
    assert applied == ["credit.lam: 0.5 -> 0.2", "model.lora.dropout: 0.0 -> 0.1", "optim.lr: 1e-05 -> 0.5"]
    for override, key in [("method=sdpo", "method"), ("credit.mode=logits", "credit.mode"),
                          ("model.lora={r: 8}", "model.lora.r"), ("model.lora=null", "model.lora"),
                          ("task.options={high: 9}", "task.options"), ("rollout.prompts_per_step=2", "prompts_per_step"),
                          ("optim.mini_batches=2", "optim.mini_batches"), ("seed=1", "seed"),
                          ("teacher.kind=frozen", "teacher.kind"), ("model.name=other", "model.name")]:
        new = load_config(None, ["model.lora={r: 4}", override]).model_dump(mode="json")
        with pytest.raises(UserError, match=rf"cannot change .*{key}"):
            runs.reconcile(saved, new, tmp_path)


def _adamw_and_schedule(lr, warmup=2, total=10):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=lr)
    factor = lambda s: (s + 1) / (warmup + 1) if s < warmup else 1 - (s - warmup) / (total - warmup)  # noqa: E731
    return params, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def test_a_changed_lr_reaches_the_optimizer_and_an_unchanged_one_is_bit_identical():
    params, opt, sched = _adamw_and_schedule(1e-3)
    for _ in range(4):
        params[0].grad = torch.ones(3)
        opt.step()
        sched.step()
    saved_opt, saved_sched, saved_lr = opt.state_dict(), sched.state_dict(), opt.param_groups[0]["lr"]
    optim_cfg = load_config(None, ["optim.lr=1e-3"]).optim
    for lr in (1e-3, 0.5):
        _, opt2, sched2 = _adamw_and_schedule(1e-3)
        opt2.load_state_dict(saved_opt)
        sched2.load_state_dict(saved_sched)
        runs.apply_optimizer_config(opt2, sched2, optim_cfg.model_copy(update={"lr": lr}))
        expected = lr * (1 - (4 - 2) / (10 - 2))  # position 4: past warmup, linear decay
        assert opt2.param_groups[0]["lr"] == expected and sched2.get_last_lr() == [expected]
        if lr == 1e-3:
            assert opt2.param_groups[0]["lr"] == saved_lr  # bit for bit: nothing changed
        sched2.step()  # the next step of the schedule scales the new base lr
        assert opt2.param_groups[0]["lr"] == pytest.approx(lr * (1 - 3 / 8), rel=1e-12)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_rotate_and_checkpoint_pt_is_the_latest(tmp_path):
    for step in range(4):
        checkpoint.save(tmp_path, {"step": step, "model": {"w": torch.full((2,), float(step))}}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003.pt", "step-000004.pt"]
    latest = checkpoint.load(tmp_path)
    assert latest["step"] == 3 and torch.equal(latest["model"]["w"], torch.full((2,), 3.0))
    assert os.path.samefile(tmp_path / "checkpoint.pt", tmp_path / "checkpoints" / "step-000004.pt")
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"step": 0, "model": {"w": torch.zeros(2)}})

    def short_write(state, f):  # what torch.save raised when the disk filled up mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1345351872 vs 1345351764")

    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        checkpoint.save(tmp_path, {"step": 1, "model": {"w": torch.ones(2)}})
    message = str(err.value)
    assert "step-000002.pt: writing the checkpoint failed (RuntimeError: [enforce fail" in message
    assert "GiB free on its disk" in message and f"{tmp_path / 'checkpoint.pt'} is intact" in message
    assert isinstance(err.value, SetupError)  # the CLI prints it as one line, exit 2
    monkeypatch.undo()
    assert checkpoint.load(tmp_path)["step"] == 0  # the resume point is the previous checkpoint
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # the partial file is gone
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001.pt"]


def test_credit_train_on_a_full_disk_says_so_in_one_line_and_resumes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save

    def full_after_first(state, f, *args, **kwargs):
        if "step-000002" in getattr(f, "name", ""):
            raise RuntimeError("unexpected pos 100 vs 90")
        return real_save(state, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_after_first)
    assert main(train_args(tiny_model_dir, out, "steps=3", "checkpoint_every=1")) == 2
    line = one_error_line(capsys)
    assert "step-000002.pt: writing the checkpoint failed" in line and "rerun with --resume" in line
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load(out)["step"] == 0
    assert main(train_args(tiny_model_dir, out, "steps=3", "checkpoint_every=1", "--resume")) == 0
    assert "resumed" in capsys.readouterr().err and checkpoint.load(out)["step"] == 2


def test_a_sharded_checkpoint_is_a_step_file_naming_a_folder_of_shards_written_first(tmp_path):
    """write_shards then save, as runs.save_checkpoint does for a sharded run (one process here: the writer
    stands in for torch.distributed.checkpoint; test_fsdp.py runs the real one on 2 processes)."""
    def shards(step, fail=False):
        def write(folder):
            folder.mkdir()
            (folder / "__0_0.distcp").write_bytes(bytes(1000))
            if fail:
                raise RuntimeError("No space left on device")
        return checkpoint.write_shards(tmp_path, step + 1, write, main=True, barrier=lambda: None)

    for step in range(2):
        checkpoint.save(tmp_path, {"step": step, "shards": shards(step)}, keep=1)
    steps = tmp_path / "checkpoints"
    assert sorted(p.name for p in steps.iterdir()) == ["step-000002.pt", "step-000002.shards"]
    latest = checkpoint.load(tmp_path)
    assert latest["step"] == 1 and latest["shards"] == steps / "step-000002.shards"  # found from checkpoint.pt
    # killed after its shards were written, before its step file: the next save removes the orphan folder
    shards(2)
    checkpoint.save(tmp_path, {"step": 3, "shards": shards(3)}, keep=1)
    assert sorted(p.name for p in steps.iterdir()) == ["step-000004.pt", "step-000004.shards"]
    # a failed write of the shards: one line, no temporary folder left, the previous checkpoint intact
    with pytest.raises(checkpoint.CheckpointWriteError, match="step-000005.shards: writing the checkpoint failed"):
        shards(4, fail=True)
    assert sorted(p.name for p in steps.iterdir()) == ["step-000004.pt", "step-000004.shards"]
    assert checkpoint.load(tmp_path)["step"] == 3
    # a step file whose folder is gone is named as such, not a stack trace
    (steps / "step-000004.shards" / "__0_0.distcp").unlink()
    (steps / "step-000004.shards").rmdir()
    with pytest.raises(UserError, match="the folder of its shards, step-000004.shards, is in neither"):
        checkpoint.load(tmp_path)
    shards(3)  # what --prune-checkpoints deletes: the step files and their folders, bytes counted once
    step_file = (steps / "step-000004.pt").stat().st_size
    assert checkpoint.remove_resume_state(tmp_path) == step_file + 1000
    assert not list(steps.iterdir())
    # `credit eval --model` on one names the files that hold whole weights
    from credit.analysis.runfiles import load_checkpoint_model

    torch.save({"step": 0, "shards": "step-000001.shards", "config": {"model": {"name": "x"}}}, tmp_path / "s.pt")
    with pytest.raises(UserError, match="a sharded run's checkpoint .* evaluate the run's final/ or checkpoint-best"):
        load_checkpoint_model(tmp_path / "s.pt")


def test_an_unreadable_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="checkpoint.pt: unreadable checkpoint"):
        checkpoint.load(tmp_path)


# ----------------------------------------------------------------------------- signals


def test_signals_only_set_a_flag_and_a_second_ctrl_c_aborts():
    before = signal.getsignal(signal.SIGINT)
    with runs.Interrupts() as interrupts:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.requested() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # the handler runs between bytecodes of the main thread
                pass
    assert signal.getsignal(signal.SIGINT) is before
    assert runs.Interrupted(signal.SIGINT, 7, Path("ck.pt")).exit_code == 130
    assert runs.Interrupted(signal.SIGTERM, 7, Path("ck.pt")).exit_code == 143


# ----------------------------------------------------------------------------- whole runs, in process


def test_resume_applies_lr_refuses_method_and_records_what_runs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, out, "steps=2", "optim.warmup_steps=1", "optim.schedule=linear")) == 0
    capsys.readouterr()
    assert main(train_args(tiny_model_dir, out, "steps=3")) == 2  # the README's re-run would have wiped it
    assert "already holds a run" in one_error_line(capsys)
    # a changed method was an AttributeError in teacher/weights.py; now it is refused before a model loads
    assert main(train_args(tiny_model_dir, out, "steps=3", "method=grpo", "--resume")) == 2
    assert "cannot change method: 'credit' -> 'grpo'" in one_error_line(capsys)

    assert main(train_args(tiny_model_dir, out, "steps=4", "optim.warmup_steps=1", "optim.schedule=linear",
                           "optim.lr=0.5", "--resume")) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "at step 2 of 4" in err and "optim.lr: 0.001 -> 0.5" in err
    assert checkpoint.load(out)["optimizer"]["param_groups"][0]["initial_lr"] == 0.5
    # the first resumed step ran at lr 0.5 on the new config's schedule: after 3 optimizer steps,
    # 1 of warmup then linear decay over steps - 1 = 3: factor 1 - 2/3 (with the old lr: 1e-3 / 3)
    rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss/lr" in r}
    assert rows[2]["loss/lr"] == pytest.approx(0.5 * (1 - 2 / 3), rel=1e-12)
    assert rows[1]["loss/lr"] == pytest.approx(1e-3 * (1 - 1 / 1), abs=1e-18)  # the first run's, kept
    assert "lr: 0.5" in (out / "config.yaml").read_text()
    assert "optim.lr: 0.001 -> 0.5" in (out / "run.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["resumes"][0]["changes"]


def test_resume_from_a_given_checkpoint_file_into_a_new_directory(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "src"
    assert main(train_args(tiny_model_dir, src, "steps=2", "checkpoint_every=1", "checkpoint_keep=2")) == 0
    first = src / "checkpoints" / "step-000001.pt"
    assert first.is_file()
    out = tmp_path / "branch"
    assert main(train_args(tiny_model_dir, out, "steps=2", f"--resume={first}")) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 1
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/total" in r] == [1]
    # the same step from the same checkpoint: the branch ends where the source run ended
    a, b = checkpoint.load(src), checkpoint.load(out)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_overwrite_starts_over_and_keeps_the_users_files(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, out, "steps=2")) == 0
    (out / "notes.md").write_text("mine")
    assert main(train_args(tiny_model_dir, out, "steps=1", "--overwrite")) == 0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/total" in r] == [0]
    assert (out / "notes.md").read_text() == "mine"
    assert checkpoint.load(out)["step"] == 0


def test_best_checkpoint_follows_held_out_accuracy(tiny_model_dir, tmp_path, monkeypatch):
    scores = iter([0.2, 0.6, 0.4, 0.5])  # after steps 1, 2, 3, then the final evaluation (step 4)
    monkeypatch.setattr(train_mod, "evaluate_model", lambda trainer: {"mean@1": next(scores), "pass@1": 0.0})
    monkeypatch.setattr(credit.evaluate, "headline", lambda r: r)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, out, "steps=4", "eval.every=1", "checkpoint_every=1",
                           "checkpoint_keep=4")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == {"step": 2, "metric": "mean@1", "value": 0.6, "path": "checkpoint-best.pt"}
    best = torch.load(out / "checkpoint-best.pt", weights_only=False)
    at_step_2 = torch.load(out / "checkpoints" / "step-000002.pt", weights_only=False)
    assert best["step"] == 1 and best["eval"]["mean@1"] == 0.6
    assert all(torch.equal(best["model"][k], at_step_2["model"][k]) for k in best["model"])
    assert "optimizer" not in best  # weights only: what eval needs


@pytest.mark.parametrize("merge", [True, False])
def test_lora_final_is_merged_when_asked(tiny_model_dir, tmp_path, merge):
    from credit.models import load_model
    from credit.analysis.runfiles import load_checkpoint_model

    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, out, "steps=1", "optim.lr=0.05", "model.lora={r: 2}",
                           f"model.merge_lora_on_save={str(merge).lower()}")) == 0
    assert (out / "final" / "adapter_config.json").exists() != merge
    if not merge:
        return
    final, _ = load_model(str(out / "final"))
    merged, _ = load_checkpoint_model(out / "checkpoint.pt")  # the same weights, merged from the checkpoint
    base, _ = load_model(tiny_model_dir)
    fs, ms, bs = final.state_dict(), merged.state_dict(), base.state_dict()
    assert fs.keys() == bs.keys()  # a plain model: no adapter modules left
    assert all(torch.equal(fs[k], ms[k]) for k in fs)
    assert any(not torch.equal(fs[k], bs[k]) for k in fs)  # the adapters' update is in the weights


def test_wandb_gets_project_entity_and_name_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    from credit.logging import _wandb_run

    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or types.SimpleNamespace(id="abc123"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config(None, ["log.wandb=true", "log.wandb_project=proj", "log.wandb_entity=team",
                             "log.wandb_run_name=credit-lam0.5", f"out_dir={tmp_path}"])
    _wandb_run(tmp_path, cfg, resumed=False)
    assert (calls[0]["project"], calls[0]["entity"], calls[0]["name"], calls[0]["id"]) == \
        ("proj", "team", "credit-lam0.5", None)
    assert (tmp_path / "wandb-run-id").read_text() == "abc123"
    _wandb_run(tmp_path, cfg, resumed=True)
    assert calls[1]["id"] == "abc123" and calls[1]["resume"] == "allow"
    (tmp_path / "my-run").mkdir()
    _wandb_run(tmp_path / "my-run", load_config(None, ["log.wandb=true"]), resumed=False)
    assert calls[2]["name"] == "my-run" and calls[2]["project"] == "credit"  # defaults: the run dir's name


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_log_replaced_under_a_live_run_is_put_back(tmp_path, how):
    # what `git stash` did to a study run: the path was rewritten with an older copy while the run
    # kept its file open; the run must not go on writing into a file no path names
    from credit.logging import RunLogger

    cfg = load_config(None, [f"out_dir={tmp_path}", "log.tensorboard=false", "log.progress=false"])
    logger = RunLogger(tmp_path, cfg, main=True)
    logger.log(0, {"loss": 1.0}, [{"i": 0}])
    logger.log(1, {"loss": 2.0}, [{"i": 1}])
    metrics = tmp_path / "metrics.jsonl"
    if how == "replaced":
        stale = tmp_path / "stale"
        stale.write_text(metrics.read_text().splitlines(keepends=True)[0] + '{"step": 99}\n')
        os.replace(stale, metrics)  # a new file at the path: older content plus something else
    else:
        metrics.unlink()
    logger.log(2, {"loss": 3.0}, [{"i": 2}])
    logger.close()
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 1, 2]
    assert [json.loads(line)["i"] for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert not list(tmp_path.glob(".*.restore"))
