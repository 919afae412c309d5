"""credit eval: the pass@k estimator by hand, majority voting, and a batched run on a tiny model."""

from __future__ import annotations

import argparse
import json
from math import comb

import pytest

from credit import evaluate as ev
from credit.tasks import build_task
from credit.tasks.base import BaseTask, Example, Outcome


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25),          # c/n
    (4, 1, 2, 0.5),           # 1 − C(3,2)/C(4,2) = 1 − 3/6
    (5, 2, 3, 0.9),           # 1 − C(3,3)/C(5,3) = 1 − 1/10
    (10, 3, 5, 1 - 21 / 252),  # 1 − C(7,5)/C(10,5)
    (4, 0, 4, 0.0),
    (4, 2, 3, 1.0),           # n − c < k: some draw always contains a success
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert ev.pass_at_k(n, c, k) == pytest.approx(expected)
    assert ev.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 1, 5)


def test_majority_vote_and_answer_keys():
    assert ev.majority_vote(["7", "8", "7", "9"], [1, 0, 1, 0]) == ("7", 2, 1)
    assert ev.majority_vote(["8", "7"], [0, 1]) == ("8", 1, 0)  # tie: first seen
    infos = [{"extracted": " 7"}, {"extracted": "7 "}, {"extracted": "8"}]
    assert ev.answer_keys(infos, ["a", "b", "c"], [1, 1, 0]) == ["7", "7", "8"]
    # a key that does not determine the reward (the gold answer) is not the prediction: use the text
    gold = [{"answer": 7}, {"answer": 7}, {"answer": 7}]
    assert ev.answer_keys(gold, ["7", " 7", "9"], [1, 1, 0]) == ["7", "7", "9"]
    assert ev.default_ks(4) == [1, 2, 4] and ev.default_ks(6) == [1, 2, 4, 6] and ev.default_ks(1) == [1]


class EvenLength(BaseTask):
    """Reward 1 iff the response has an even number of characters; the answer is the length mod 3."""

    name = "even"

    def examples(self, split):
        return [Example(f"q{i}", [{"role": "user", "content": f"Say something about {i}."}]) for i in range(3)]

    def score(self, example, response):
        return Outcome(float(len(response) % 2 == 0), "", {"extracted": str(len(response) % 6)})


def test_evaluate_is_consistent_with_its_items(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    res = ev.evaluate(model, tok, EvenLength(), n=4, max_new_tokens=5, batch_size=12, seed=3)
    items = res["items"]
    assert res["num_items"] == 3 and res["ks"] == [1, 2, 4]
    assert res["mean@4"] == pytest.approx(sum(sum(i["rewards"]) for i in items) / 12)
    for k in (1, 2, 4):
        assert res[f"pass@{k}"] == pytest.approx(sum(ev.pass_at_k(4, i["correct"], k) for i in items) / 3)
    assert res["pass@1"] == pytest.approx(res["mean@4"])  # 0/1 rewards: pass@1 = mean accuracy
    assert res["maj@4"] == pytest.approx(sum(i["majority_reward"] for i in items) / 3)
    assert set(ev.headline(res)) == {"mean@4", "pass@1", "pass@2", "pass@4", "maj@4"}
    assert not model.training


def test_cli_eval(tiny_model_and_tokenizer, tmp_path, capsys):
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    parser = argparse.ArgumentParser()
    ev.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "m"), "--task", "addition", "--limit", "2",
                              "-n", "2", "--max-new-tokens", "4", "--json", str(tmp_path / "e.json")])
    assert args.func(args) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["num_items"] == 2 and {"mean@2", "pass@1", "pass@2", "maj@2"} <= set(res)
    assert "mean@2" in capsys.readouterr().out
    args = parser.parse_args(["eval", "--model", str(tmp_path / "m"), "--task", "nope"])
    assert args.func(args) == 2 and "unknown task" in capsys.readouterr().err
    assert build_task("addition").examples("test")  # the task used above has a held-out split
