"""The study's scripts (study/signal_share.py, study/tables.py, study/behaviour.py): what STUDY.md's tables are made of."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "study"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


signal_share = load("signal_share")
tables = load("tables")
behaviour = load("behaviour")


@pytest.mark.parametrize("piece, a, b, op, expected", [
    ("17", "17", "5", "+", "copied"),
    (" 5", "17", "5", "+", "copied"),
    ("22", "17", "5", "+", "computed"),
    ("2", "17", "5", "+", "computed"),  # a digit of 22 found in neither operand
    ("1", "17", "5", "+", "copied"),  # a digit of 17 counts as copied, even if it is also the answer's
    ("9", "17", "5", "+", "generic"),  # a number in neither the input nor the answer
    (" is", "17", "5", "+", "generic"),
    ("12", "3", "4", "*", "computed"),
    ("7", "3", "4", "*", "generic"),  # 3 + 4, not 3 × 4
])
def test_token_class(piece, a, b, op, expected):
    assert signal_share.token_class(piece, a, b, op) == expected


def record(tok, a: int, b: int, response: str, *, signal: bool = True, step: int = 0) -> dict:
    from credit.teacher.contexts import Privileged, render_context

    messages = [{"role": "user", "content": f"What is {a} + {b}? Answer with just the number."}]
    demo = f"{a} + {b} = {a + b}"
    return {"step": step, "prompt_messages": messages, "has_signal": signal, "demo": demo, "feedback": None,
            "response_ids": tok(response, add_special_tokens=False)["input_ids"],
            "teacher_context_ids": render_context(tok, messages, Privileged(demo=demo)) if signal else None}


def test_analyse_counts_every_token_of_the_rollouts_with_a_signal(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    records = [record(tok, 3, 4, "3 + 4 = 7"), record(tok, 10, 2, "The sum is 12."),
               record(tok, 6, 6, "12", signal=False)]
    pool = [r["prompt_messages"] for r in records]
    for whole in (None, signal_share.whole_contexts(records)):
        out = signal_share.analyse(records, model, tok, pool, whole=whole)
        assert out["rollouts"] == 2
        assert sum(out["tokens"].values()) == len(records[0]["response_ids"]) + len(records[1]["response_ids"])
        for key in ("share_abs_dv", "share_abs_s"):
            assert sum(c[key] for c in out["classes"].values()) == pytest.approx(1.0)
    # the whole contexts are those of rollouts with a signal; with one problem there is nothing to contrast
    assert [w[0] for w in signal_share.whole_contexts(records)] == pool[:2]
    with pytest.raises(ValueError, match="no other problem"):
        signal_share.analyse(records[:1], model, tok, pool, whole=signal_share.whole_contexts(records[:1]))


def test_swap_context_changes_s_but_not_dv(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    records = [record(tok, 3, 4, "3 + 4 = 7"), record(tok, 10, 2, "The sum is 12.")]
    pool = [r["prompt_messages"] for r in records]
    as_trained = signal_share.analyse(records, model, tok, pool)
    swapped = signal_share.analyse(records, model, tok, pool, whole=signal_share.whole_contexts(records))
    for c in signal_share.CLASSES:
        assert swapped["classes"][c]["mean_abs_dv"] == pytest.approx(as_trained["classes"][c]["mean_abs_dv"], abs=1e-5)
    assert any(abs(swapped["classes"][c]["mean_abs_s"] - as_trained["classes"][c]["mean_abs_s"]) > 1e-3
               for c in signal_share.CLASSES)


def test_tables_columns_line_up_and_lenient_means_its_seeds(tmp_path, capsys):
    runs = []
    for seed, (after, lenient) in enumerate([(0.5, 0.75), (0.25, None)]):
        run = tmp_path / "runs" / "a" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"eval_after": {
            "n": 4, "mean@4": after, "maj@4": after, "pass@4": 1.0, "response_len_mean": 10.0, "truncated_frac": 0.0}}))
        runs.append({"cell": "a", "seed": seed, "dir": str(run), "before": 0.1, "after": after, "best": after,
                     "best_step": 30, "step_s_median": 50.0})
        if lenient is not None:
            (tmp_path / "out" / "lenient").mkdir(parents=True)
            (tmp_path / "out" / "lenient" / f"a-seed{seed}.json").write_text(json.dumps({"mean@4": lenient}))
    mean_std = {"mean": 0.375, "std": 0.177, "n": 2}
    agg = {"runs": runs, "comparisons": [{"a": "a", "b": "b", "error": "no common seed"}],
           "cells": {"a": {"seeds": [0, 1], "before": mean_std, "after": mean_std, "best": mean_std,
                           "step_s_median": {"mean": 50.0, "std": 0.0, "n": 2}}}}
    (tmp_path / "out" / "aggregate.json").write_text(json.dumps(agg))
    tables.main(str(tmp_path / "out" / "aggregate.json"))
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 3
    for block in blocks[:2]:
        lines = block.splitlines()
        assert len({ln.count("|") for ln in lines}) == 1, block  # header, separator and rows agree
    header, _, row = blocks[1].splitlines()
    lenient = [c.strip() for c in header.split("|")].index("lenient after")
    assert row.split("|")[lenient].strip() == "0.750 (n=1)"  # the one seed that has a lenient re-score
    assert blocks[2] == "- a − b: not computed (no common seed)"


@pytest.mark.parametrize("response, expected", [
    ("17 + 5 = 22", True),
    ("5 plus 17 is 21", True),  # restating is not being right
    ("The answer is 22.", False),
    ("17 + 55 = 72", False),  # 5 only as a digit of another number is not the operand
    ("", False),
])
def test_restates_needs_every_operand_as_a_number(response, expected):
    assert behaviour.restates("What is 17 + 5? Answer with just the number.", response) is expected


def test_behaviour_reads_only_late_rollouts_and_the_logged_reward():
    def rec(step, response, reward):
        return {"step": step, "prompt_messages": [{"role": "user", "content": "What is 3 + 4?"}],
                "response": response, "reward": reward, "response_ids": list(range(len(response.split())))}

    records = [rec(5, "no idea", 0.0), rec(20, "3 + 4 = 7", 1.0), rec(21, "3 + 4 = 8", 0.0), rec(22, "7", 1.0)]
    b = behaviour.behaviour(records, from_step=20)
    assert (b["rollouts"], b["steps"]) == (3, [20, 21, 22])
    assert b["restates"] == pytest.approx(2 / 3) and b["correct"] == pytest.approx(2 / 3)
    assert b["response_tokens"] == pytest.approx((5 + 5 + 1) / 3)
    with pytest.raises(ValueError, match="step >= 30"):
        behaviour.behaviour(records, from_step=30)
