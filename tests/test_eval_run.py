"""``credit eval --model RUN`` evaluates the run the way it evaluated itself (issue 27, item 2): the run's
task and options, token budget, samples, temperature, seed, micro-batch, backend and chat template
variables come from its config.yaml; a flag overrides them; the output names the config used."""

import json

import pytest

from credit import evaluate as ev
from credit.cli import main

REWARD = '''
def reward(prompts, responses, examples):
    # the response itself is the extracted answer: maj@n's answers then hold the sampled texts
    return [{"reward": float(len(r) % 2), "info": {"extracted": r}} for r in responses]
'''


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval-run")
    (tmp / "capitals.jsonl").write_text("".join(
        json.dumps({"country": c, "question": f"What is the capital of {c}?"}) + "\n"
        for c in ("France", "Japan", "Italy", "Spain", "Egypt", "Peru", "Kenya", "Canada")))
    (tmp / "my_reward.py").write_text(REWARD)
    out = tmp / "run"
    rc = main(["train", f"model.name={tiny_model_dir}", f"out_dir={out}", "device=cpu", "steps=1", "seed=3",
               f"task={{name: prompts, options: {{path: {tmp / 'capitals.jsonl'}, prompt_field: question, "
               f"reward: {tmp / 'my_reward.py'}:reward, n_test: 3}}}}",
               "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=5",
               "rollout.micro_batch=5", "eval.samples=3", "eval.temperature=0.9", "eval.before=false",
               "log.progress=false", "log.tensorboard=false", "checkpoint_every=1"])
    assert rc == 0
    return out


def evaluate_cli(capsys, tmp_path, *argv):
    capsys.readouterr()
    assert main(["eval", *argv, "--json", str(tmp_path / "e.json")]) == 0
    captured = capsys.readouterr()
    return json.loads((tmp_path / "e.json").read_text()), captured.out + captured.err


def test_eval_of_a_run_reproduces_its_summary(run_dir, tmp_path, capsys):
    result, output = evaluate_cli(capsys, tmp_path, "--model", str(run_dir))
    after = json.loads((run_dir / "summary.json").read_text())["eval_after"]
    assert (result["task"], result["n"], result["temperature"], result["max_new_tokens"], result["seed"]) == \
        ("prompts", 3, 0.9, 5, 3)  # not addition, 4, 0.7, 64, 0: the defaults for a plain model
    assert result["items"] == after["items"]  # the same samples: the same texts, rewards and votes
    assert result["mean@3"] == after["mean@3"] and result["response_len_mean"] == after["response_len_mean"]
    assert result["run_config"] == str(run_dir / "config.yaml")
    assert f"settings from the run config {run_dir / 'config.yaml'}" in output
    assert "task prompts" in output and "max_new_tokens 5" in output


@pytest.mark.parametrize("where", ["final", "checkpoint.pt", "checkpoints/step-000001.pt"])
def test_a_flag_overrides_the_run_and_its_final_or_checkpoint_finds_it(run_dir, tmp_path, capsys, where):
    result, _ = evaluate_cli(capsys, tmp_path, "--model", str(run_dir / where), "-n", "1", "--max-new-tokens", "2")
    assert (result["task"], result["n"], result["max_new_tokens"], result["temperature"]) == ("prompts", 1, 2, 0.9)


def test_a_plain_model_keeps_the_built_in_defaults(tiny_model_dir, tmp_path, capsys):
    result, output = evaluate_cli(capsys, tmp_path, "--model", tiny_model_dir, "--limit", "1", "-n", "1",
                                  "--max-new-tokens", "2")
    assert (result["task"], result["temperature"], result["seed"]) == ("addition", 0.7, 0)
    assert "run_config" not in result and "run config" not in output


def test_sampling_in_pieces_for_the_progress_bar_draws_the_samples_of_one_call(tiny_model_and_tokenizer, monkeypatch):
    import credit.rollout as ro
    from credit.rollout import SamplingConfig, encode_prompts
    from credit.tasks import build_task

    model, tok = tiny_model_and_tokenizer
    task = build_task("addition")
    examples = task.examples("test")[:7]
    prompts = encode_prompts(tok, [e.messages for e in examples])
    one_call = ro.sample(model, tok, prompts, SamplingConfig(num_samples=3, max_new_tokens=3, temperature=1.0,
                                                             micro_batch_size=4, seed=5))
    calls, scored, real = [], [], ro.sample
    monkeypatch.setattr(ro, "sample", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    monkeypatch.setattr(task, "score_batch", lambda exs, texts: scored.extend(texts) or
                        [ro_outcome() for _ in texts])
    ev.evaluate(model, tok, task, n=3, temperature=1.0, max_new_tokens=3, batch_size=4, seed=5, limit=7,
                progress=True)
    assert calls == [4, 3]  # lcm(4, 3) = 12 sequences = 4 items a piece
    assert scored == one_call.texts


def ro_outcome():
    from credit.tasks.base import Outcome

    return Outcome(0.0)
