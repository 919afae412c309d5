"""credit pmi: Σ ΔV telescopes to log π(y|c) − log π(y|x); the empirical posterior check's arithmetic."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from credit.analysis import pmi
from credit.rollout import encode_prompts
from credit.tasks import build_task
from credit.teacher.contexts import Privileged, render_context


def test_telescoping_matches_independent_passes(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "system", "content": "Be brief."},
                                                                  {"role": "user", "content": "Capital of France?"}]]
    responses = [tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                 tok("It is Paris, the capital.", add_special_tokens=False)["input_ids"]]
    student = encode_prompts(tok, prompts)
    teacher = [render_context(tok, m, Privileged(feedback="Check your arithmetic.", demo="Paris")) for m in prompts]
    out = pmi.telescoping(model, tok, student, teacher, responses, temperature=0.8)
    for row in out:
        assert abs(row["diff"]) < 1e-4  # exact up to float error
        assert row["pmi"] == pytest.approx(row["log_p_teacher"] - row["log_p_student"])
        assert abs(row["pmi"]) > 1e-3  # the contexts differ: a non-trivial check
    # teacher context = student context ⇒ Σ ΔV = 0
    same = pmi.telescoping(model, tok, student, student, responses)
    assert all(abs(r["sum_dv"]) < 1e-5 and abs(r["pmi"]) < 1e-6 for r in same)


def test_posterior_estimate_and_correlations():
    # (count + 1) / (M + 1): 3 of 7 samples share z, plus y itself -> 4/8
    assert pmi.log_p_feedback_estimate(3, 7) == pytest.approx(math.log(0.5))
    assert pmi.log_p_feedback_estimate(0, 15) == pytest.approx(math.log(1 / 16))
    assert pmi.log_p_feedback_estimate(4, 4) == 0.0
    with pytest.raises(ValueError):
        pmi.log_p_feedback_estimate(5, 4)
    assert pmi.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pmi.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # hand-computed: x=[1,2,3,4], y=[1,3,2,4] -> sxy=4, sxx=syy=5 -> 0.8
    assert pmi.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pmi.pearson([1, 1], [2, 3]) is None and pmi.pearson([1], [1]) is None
    assert pmi.spearman([1, 10, 100], [1, 2, 3]) == pytest.approx(1.0)


def test_pmi_report_on_addition(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    task = build_task("addition", answer_feedback=True)
    cfg = pmi.PMIConfig(num_examples=2, responses_per_example=2, mc_samples=4, max_new_tokens=4, seed=1)
    result = pmi.pmi_report(model, tok, task, cfg)
    items, summary = result["items"], result["summary"]
    assert len(items) == 4 and summary["checked"] + summary["skipped"] == 4
    for it in items:
        if "skipped" in it:
            continue
        assert abs(it["diff"]) < 1e-4
        assert 0 <= it["feedback_matches"] <= 4
        assert it["empirical_pmi"] == pytest.approx(-math.log((it["feedback_matches"] + 1) / 5))
    assert summary["max_abs_diff"] < 1e-4
    json.dumps(result)  # serializable


def test_cli_pmi_rollouts(tiny_model_and_tokenizer, tmp_path, capsys):
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    msgs = [{"role": "user", "content": "What is 1 + 2?"}]
    recs = [{"step": 0, "prompt_messages": msgs, "response": "4", "response_ids": tok("4", add_special_tokens=False)["input_ids"],
             "reward": 0.0, "feedback": "The correct answer is 3.", "demo": None, "negative_prompts": []},
            {"step": 0, "prompt_messages": msgs, "response": "3", "response_ids": tok("3", add_special_tokens=False)["input_ids"],
             "reward": 1.0, "feedback": "", "demo": None, "negative_prompts": []}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    parser = argparse.ArgumentParser()
    pmi.add_parser(parser.add_subparsers())
    args = parser.parse_args(["pmi", "--model", str(tmp_path / "m"), "--rollouts", str(tmp_path / "r.jsonl"),
                              "--json", str(tmp_path / "out.json")])
    assert args.func(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["summary"]["checked"] == 1 and result["summary"]["max_abs_diff"] < 1e-4
    assert "skipped" in result["items"][1]
    assert "Σ ΔV" in capsys.readouterr().out
