"""The training loop on a tiny model: every method and mode steps, bad configs fail before a model
loads, NaN never reaches the weights, λ = 0 is SDPO, and one process equals two (resume: test_resume.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import credit.train as train_mod
from credit.cli import main as cli_main
from credit.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).parent))
from _dist_worker import fixed_sample  # noqa: E402

BASE = ["device=cpu", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "optim.micro_batch=4", "optim.lr=1e-3", "task.options={answer_feedback: true}", "log.progress=false",
        "log.tensorboard=false"]


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir):
    return tiny_model_dir


def make_trainer(tiny_dir, tmp_path, *overrides, monkeypatch=None):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one process, many trainers: each sets its own mixed precision
    if monkeypatch is not None:
        monkeypatch.setattr(train_mod, "sample", fixed_sample)
    cfg = load_config(None, [f"model.name={tiny_dir}", f"out_dir={tmp_path}", *BASE, *overrides])
    return train_mod.Trainer(cfg)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["credit.lamda=0.3"], "credit.lamda: unknown key"),
        (["optim.lr=fast"], "optim.lr"),
        (["method=credit", "credit.mode=logits", "credit.alpha=0.5"], "set credit.alpha: 1.0"),
        (["method=credit", "rollout.prompts_per_step=4", "credit.num_negatives=4"], "credit.num_negatives <= 3"),
        (["method=credit", "rollout.prompts_per_step=1"], "rollout.prompts_per_step >= 2"),
        (["teacher.kind=average"], "teacher.kind"),
    ],
)
def test_bad_config_fails_before_any_model_loads(overrides, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    # the CLI reports it (no traceback) even though the model path does not exist
    assert cli_main(["train", "model.name=/nonexistent/model", *overrides]) == 2
    err = capsys.readouterr().err
    assert message.split(":")[0] in err and "Traceback" not in err and "nonexistent" not in err


def test_override_values_yaml_cannot_read_are_text():
    # "*" is a YAML alias marker: as a value it is the text "*" (was a bare YAML traceback)
    from credit.analysis.runfiles import parse_task_options

    assert load_config(None, ["task.options.op=*", "task.options.n_test=5"]).task.options == {"op": "*", "n_test": 5}
    assert parse_task_options(["op=*", "scorer=lenient", "low=[1"]) == {"op": "*", "scorer": "lenient", "low": "[1"}


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("optim:\n  learning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match="optim.learning_rate: unknown key"):
        load_config(bad)


def test_shipped_configs_validate():
    configs = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


# ----------------------------------------------------------------------------- one step of everything


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=grpo"],
        ["method=sdpo"],
        ["method=sdpo", "credit.mode=logits", "credit.alpha=0.5", "credit.top_k=20"],
        ["method=sdpo", "credit.mode=logits", "credit.alpha=0.0", "credit.top_k=null"],
        ["method=credit"],
        ["method=credit", "credit.mode=logits", "credit.top_k=20", "credit.num_negatives=2"],
        ["method=credit", "credit.mode=sequence"],
        ["method=sdpo", "credit.mode=sequence", "credit.sequence_length_normalize=true"],
        ["method=credit", "credit.grpo_weight=0.9", "model.gradient_checkpointing=true"],
        ["method=credit", "credit.negative_strategy=all", "credit.aggregator=logmeanexp", "credit.reward_to_go=true"],
        ["method=credit", "credit.swap=context", "credit.grpo_weight=0.5"],
        ["method=credit", "optim.epochs=2", "optim.mini_batches=2", "teacher.kind=trust_region"],
        ["method=credit", "teacher.kind=live", "optim.loss_aggregation=seq-mean-token-mean"],
        ["method=credit", "teacher.kind=frozen", "optim.loss_aggregation=seq-mean-token-sum"],
        ["method=credit", "model.lora={r: 4}", "teacher.kind=ema"],
        ["method=credit", "model.lora={r: 4}", "teacher.kind=frozen"],
        ["method=credit", "rollout.backend=loop", "threads=auto"],
    ],
    ids=lambda o: " ".join(o),
)
def test_one_step_changes_the_weights(tiny_dir, tmp_path, monkeypatch, overrides):
    trainer = make_trainer(tiny_dir, tmp_path, *overrides, monkeypatch=monkeypatch)
    before = params(trainer.unwrapped)
    metrics, _ = trainer.run_step(0)
    after = params(trainer.unwrapped)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    assert metrics["loss/skipped_steps"] == 0 and torch.isfinite(torch.tensor(metrics["loss/total"]))
    for key in ("task/reward_mean", "teacher/demo_fraction", "perf/rollout_s", "perf/update_s", "perf/step_s"):
        assert key in metrics
    assert metrics["perf/threads"] == torch.get_num_threads() >= 1
    if "method=grpo" not in overrides:  # every distillation mode logs the same signal/* (logits too)
        assert "signal/dv_mean" in metrics and "signal/pmi_mean" in metrics
    if "method=credit" in overrides:
        assert metrics["credit/contrast_possible"] == 1.0 and metrics["credit/no_contrast_fraction"] == 0.0
        for key in ("signal/s_mean", "signal/g_mean", "signal/s_negative_fraction"):
            assert key in metrics


def test_ema_teacher_moves_toward_the_student_and_frozen_does_not(tiny_dir, tmp_path, monkeypatch):
    for kind, should_move in [("ema", True), ("frozen", False)]:
        trainer = make_trainer(tiny_dir, tmp_path, "method=sdpo", f"teacher.kind={kind}", monkeypatch=monkeypatch)
        t0 = params(trainer.teacher.ref)
        trainer.run_step(0)
        t1, s1 = params(trainer.teacher.ref), params(trainer.unwrapped)
        k = "model.layers.0.mlp.down_proj.weight"
        moved = not torch.equal(t0[k], t1[k])
        assert moved == should_move
        if should_move:  # θ_T ← 0.95 θ_T + 0.05 θ
            torch.testing.assert_close(t1[k], 0.95 * t0[k] + 0.05 * s1[k])


def test_bf16_keeps_fp32_master_weights_and_every_parameter_moves(tiny_dir, tmp_path, monkeypatch):
    """A bf16 parameter rounds most lr·update steps away; autocast over fp32 masters does not."""
    trainer = make_trainer(tiny_dir, tmp_path, "method=sdpo", "model.dtype=bfloat16", "optim.lr=1e-6",
                           monkeypatch=monkeypatch)
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())
    before, teacher_before = params(trainer.unwrapped), params(trainer.teacher.ref)
    metrics, _ = trainer.run_step(0)
    assert metrics["loss/skipped_steps"] == 0
    after, teacher_after = params(trainer.unwrapped), params(trainer.teacher.ref)
    moved = sum(int((before[k] != after[k]).sum()) for k in before)
    total = sum(v.numel() for v in before.values())
    assert moved >= 0.9 * total, f"{moved} of {total} parameters moved"
    for k in before:  # the fp32 EMA teacher moves by exactly r·(θ − θ_T)
        torch.testing.assert_close(teacher_after[k], teacher_before[k] + 0.05 * (after[k] - teacher_before[k]),
                                   rtol=0, atol=1e-7 * max(1.0, float(after[k].abs().max())))
        assert teacher_after[k].dtype == torch.float32


def test_blend_at_w_one_is_grpo_in_a_full_step(tiny_dir, tmp_path, monkeypatch):
    results = []
    for method in (["method=grpo"], ["method=sdpo", "credit.grpo_weight=1.0"]):
        trainer = make_trainer(tiny_dir, tmp_path, *method, monkeypatch=monkeypatch)
        trainer.run_step(0)
        results.append(params(trainer.unwrapped))
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_credit_on_a_train_split_smaller_than_two_steps_never_contrasts_a_problem_with_itself(
        tiny_dir, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_dir, tmp_path, "method=credit", "rollout.prompts_per_step=4",
                           "credit.negative_strategy=random", "log.rollouts_per_step=100", monkeypatch=monkeypatch)
    trainer.train_split = trainer.train_split[:6]  # an epoch is one step; steps wrap over 6 examples
    for step in range(4):
        batch, _, metrics, records = trainer.collect(step)
        assert metrics["credit/contrast_possible"] == 1.0 and len(records) == 12
        assert len({repr(r["prompt_messages"]) for r in records}) == 4  # four distinct problems
        for r in records:
            assert r["negative_prompts"] and all(neg != r["prompt_messages"] for neg in r["negative_prompts"])
        assert batch.has_contrast.sum() == batch.has_signal.sum()


def hand_credit_loss(model, teacher, b, lam: float, mode: str, temperature: float) -> torch.Tensor:
    """CREDIT's loss written out from unshared forward passes and log_softmax, independent of
    credit.methods / credit.objectives: token mode −Σ r^λ_t·ℓS_t, logit mode (full vocabulary)
    −Σ_t Σ_v p_S(v)·sg(log p_T(v|c) − λ·G(v) − (1−λ)·log p_S(v)), token mean over rollouts with a signal."""
    def log_probs(module, packed):  # position C−1+t predicts response token t
        c = packed.input_ids.shape[1] - packed.response_len
        out = module(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                     position_ids=packed.position_ids).logits
        return torch.log_softmax(out[:, c - 1: c - 1 + packed.response_len].float() / temperature, dim=-1)

    student = log_probs(model, b.student)  # (N, R, V) with gradient
    with torch.no_grad():
        lt = log_probs(teacher, b.teacher)
        g = torch.stack([log_probs(teacher, neg) for neg in b.negatives]).mean(0)  # mean over K of log-probs
    mask = b.student.response_mask * b.has_signal[:, None]
    if mode == "token":
        pick = b.student.response_ids[..., None]
        ls, lt, g = student.gather(-1, pick)[..., 0], lt.gather(-1, pick)[..., 0], g.gather(-1, pick)[..., 0]
        per_token = -((1 - lam) * (lt - ls.detach()) + lam * (lt - g)) * ls
    else:
        advantage = (1 - lam) * (lt - student.detach()) + lam * (lt - g)
        per_token = -(student.exp() * advantage).sum(-1)
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("mode", ["token", "logits"])
def test_credit_step_at_half_lambda_has_the_hand_derived_loss_and_gradient(tiny_dir, tmp_path, monkeypatch, mode):
    extra = ["credit.mode=logits", "credit.top_k=null"] if mode == "logits" else []
    grads = {}
    for lam in (0.5, 0.0):
        trainer = make_trainer(tiny_dir, tmp_path, "method=credit", f"credit.lam={lam}", "credit.num_negatives=2",
                               "optim.grad_clip=null", *extra, monkeypatch=monkeypatch)
        batch, targets, _, _ = trainer.collect(0)
        assert torch.equal(batch.has_contrast, batch.has_signal) and batch.has_signal.sum() > 0
        model = trainer.unwrapped
        names = [n for n, p in model.named_parameters()]
        expected = hand_credit_loss(model, trainer.teacher.ref, batch, lam, mode, 1.0)
        expected_grads = dict(zip(names, torch.autograd.grad(expected, list(model.parameters()))))
        seen = {}
        step = trainer.optimizer.step

        def capture(*args, **kwargs):
            seen.update({n: p.grad.clone() for n, p in model.named_parameters()})
            return step(*args, **kwargs)

        monkeypatch.setattr(trainer.optimizer, "step", capture)
        metrics = trainer.update(batch, targets, 0)
        # float32 forwards in two orders (prefix-shared and chunked vs plain): a relative 1e-4
        assert metrics["loss/total"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
        scale = max(g.abs().max() for g in expected_grads.values())
        for n in names:
            torch.testing.assert_close(seen[n], expected_grads[n], rtol=0, atol=1e-4 * scale)
        grads[lam] = seen
    # λ matters: the gradient at λ = 0.5 is not SDPO's
    diff = max((grads[0.5][n] - grads[0.0][n]).abs().max() for n in grads[0.5])
    assert diff > 1e-2 * max(g.abs().max() for g in grads[0.5].values())


def test_the_engines_log_probs_stand_in_for_the_old_log_prob_pass_on_policy(tiny_dir, tmp_path, monkeypatch):
    """An engine that returns the sampled tokens' log-probs (continuous) saves collect()'s ℓS forward on-policy
    (a score that holds ℓS: sequence mode), and what the targets use is what that forward computes (float64:
    decoding with a KV cache and one forward over the whole sequence agree far below the tolerance).
    Off-policy, or with an engine that returns none, the forward runs."""
    forwards = []
    real = train_mod.response_logprobs
    monkeypatch.setattr(train_mod, "response_logprobs", lambda *a, **k: forwards.append(1) or real(*a, **k))
    common = ["method=credit", "credit.mode=sequence", "model.dtype=float64", "rollout.max_new_tokens=8"]
    trainer = make_trainer(tiny_dir, tmp_path, *common, "rollout.backend=continuous")
    batch, targets, _, _ = trainer.collect(0)
    assert not forwards and batch.student.response_mask.sum() > 0
    expected = real(trainer.unwrapped, batch.student, 1.0)
    assert batch.old_logp.dtype == torch.float64
    torch.testing.assert_close(batch.old_logp, expected, rtol=0, atol=1e-9)
    trainer.update(batch, targets, 0)  # and the step runs on them
    for extra in (["rollout.backend=continuous", "optim.epochs=2"], ["rollout.backend=generate"]):
        make_trainer(tiny_dir, tmp_path / extra[-1], *common, *extra).collect(0)
        assert len(forwards) == 1, extra
        forwards.clear()


@pytest.mark.parametrize("kind, extra", [("frozen", []), ("ema", []), ("ema", ["model.lora={r: 4}"])])
def test_kl_to_the_initial_model_is_zero_before_training_and_k3_after(tiny_dir, tmp_path, kind, extra):
    """policy/kl_initial: KL(π_θ ‖ π_init) on the sampled tokens by the k3 estimator, against π_init computed
    here from a copy of the initial weights (float64). A frozen teacher is π_init itself, LoRA's is the base
    with the adapters off; only full fine-tuning with another teacher keeps a copy of its own."""
    import copy

    from credit.scoring import response_logprobs

    trainer = make_trainer(tiny_dir, tmp_path, "method=credit", f"teacher.kind={kind}", "model.dtype=float64",
                           "log.kl_every=1", *extra)
    lora = bool(extra)
    assert (trainer.initial is trainer.teacher) == (kind == "frozen")
    copies = {id(t.ref) for t in (trainer.teacher, trainer.initial) if hasattr(t, "ref")}  # full weight copies
    assert len(copies) == {("frozen", False): 1, ("ema", False): 2, ("ema", True): 0}[kind, lora]
    model = trainer.unwrapped
    initial = copy.deepcopy(model)
    for step in range(3):
        batch, targets, _, _ = trainer.collect(step)
        mask = batch.student.response_mask
        with torch.no_grad():
            if lora:
                with initial.disable_adapter():
                    expected_initial = response_logprobs(initial, batch.student, 1.0)
            else:
                expected_initial = response_logprobs(initial, batch.student, 1.0)
            policy = response_logprobs(model, batch.student, 1.0)
        torch.testing.assert_close(batch.initial_logp, expected_initial, rtol=0, atol=1e-10)
        log_r = expected_initial - policy
        k3 = float(((log_r.exp() - 1 - log_r) * mask).sum() / mask.sum())
        kl = trainer.update(batch, targets, step)["policy/kl_initial"]
        if step == 0:
            assert abs(kl) < 1e-12  # nothing has moved yet
        else:
            assert kl > 1e-8 and kl == pytest.approx(k3, rel=1e-6)


def test_kl_to_the_initial_model_is_computed_every_n_steps_only(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path, "method=grpo", "log.kl_every=2")
    assert [trainer.collect(step)[0].initial_logp is not None for step in range(3)] == [True, False, True]
    assert make_trainer(tiny_dir, tmp_path / "off", "method=grpo").initial is None  # default: no copy, no pass


def test_credit_with_lambda_zero_is_sdpo(tiny_dir, tmp_path, monkeypatch):
    results = []
    for method in (["method=sdpo"], ["method=credit", "credit.lam=0.0"]):
        trainer = make_trainer(tiny_dir, tmp_path, *method, monkeypatch=monkeypatch)
        trainer.run_step(0)
        results.append(params(trainer.unwrapped))
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_nan_loss_skips_the_step_and_never_reaches_the_weights(tiny_dir, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_dir, tmp_path, "method=sdpo", monkeypatch=monkeypatch)
    loss = trainer.method.loss

    def nan_loss(m, batch, targets, scorer):
        out = loss(m, batch, targets, scorer)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.method, "loss", nan_loss)
    before, teacher_before = params(trainer.unwrapped), params(trainer.teacher.ref)
    metrics, _ = trainer.run_step(0)
    assert metrics["loss/skipped_steps"] == 1
    after, teacher_after = params(trainer.unwrapped), params(trainer.teacher.ref)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    assert all(torch.isfinite(v).all() for v in after.values())


def test_a_batch_without_any_teacher_signal_steps_without_error(tiny_dir, tmp_path, monkeypatch):
    from credit.tasks import Outcome

    trainer = make_trainer(tiny_dir, tmp_path, "method=sdpo", monkeypatch=monkeypatch)
    monkeypatch.setattr(trainer.task, "score_batch", lambda examples, responses: [Outcome(0.0)] * len(responses))
    before = params(trainer.unwrapped)
    metrics, _ = trainer.run_step(0)
    assert metrics["teacher/no_signal_fraction"] == 1.0 and metrics["loss/total"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in params(trainer.unwrapped).items())


# ----------------------------------------------------------------------------- whole runs


def run_cli(args, env_extra=None, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "credit.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_train_end_to_end_writes_run_directory(tiny_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli([f"model.name={tiny_dir}", f"out_dir={out}", *BASE, "steps=3", "eval.limit=4", "eval.samples=2",
                    "checkpoint_every=2", "log.tensorboard=true"])
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "held-out mean@2" in log
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "task/reward_mean" in r] == [0, 1, 2]
    logged = [r["eval/mean@2"] for r in rows if "eval/mean@2" in r]
    from credit.tasks import build_task

    held_out = [e.id for e in build_task("addition", answer_feedback=True).examples("test")[:4]]
    for when, index in (("eval_before", 0), ("eval_after", -1)):
        ev = summary[when]  # the headline is the mean of its items' rewards, on the held-out items, and is logged
        assert ev["scorer"] == "strict" and [it["id"] for it in ev["items"]] == held_out
        assert ev["mean@2"] == pytest.approx(sum(sum(it["rewards"]) / 2 for it in ev["items"]) / 4)
        assert logged[index] == ev["mean@2"]
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert records and all("teacher_context" in r and r["response_ids"] for r in records)
    assert (out / "checkpoint.pt").exists() and (out / "final" / "config.json").exists()
    assert list((out / "tb").iterdir())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one(tiny_dir, tmp_path):
    """In float64, so that the all-reduce's different summation order stays far below the tolerance
    (in float32 it reached a 2.2e-5 relative difference on an AVX2-only machine)."""
    worker = Path(__file__).parent / "_dist_worker.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(worker), tiny_dir, str(tmp_path / "one.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), str(worker), tiny_dir, str(tmp_path / "two.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["world"], b["world"]) == (1, 2)
    for m1, m2 in zip(a["metrics"], b["metrics"]):  # the same global loss and gradient
        assert m1["loss/grad_norm"] == pytest.approx(m2["loss/grad_norm"], rel=1e-9)
        assert m1["loss/total"] == pytest.approx(m2["loss/total"], rel=1e-9, abs=1e-12)
        assert m1["task/reward_mean"] == pytest.approx(m2["task/reward_mean"])
        # signal/*: token means and spreads of ΔV, S, G over both processes' rows, not a mean of their means
        signals = {k: v for k, v in m1.items() if k.startswith("signal/")}
        assert len(signals) >= 8 and {k: m2[k] for k in signals} == pytest.approx(signals, rel=1e-9, abs=1e-12)
    # Adam divides by √v, so an element whose gradient is ~0 can move by rounding noise; in float64
    # that noise is ~1e-16 relative, far below 1e-9 of one update (lr = 1e-3). A wrong global scale
    # is invisible to Adam; grad_norm above catches it.
    for k, v in a["params"].items():
        assert v.dtype == torch.float64
        torch.testing.assert_close(v, b["params"][k], atol=1e-12, rtol=0)
