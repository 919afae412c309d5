"""credit eval: the pass@k estimator by hand, majority voting, and a batched run on a tiny model."""

from __future__ import annotations

import argparse
import json
from math import comb

import pytest

from credit import evaluate as ev
from credit.analysis import eval_cli
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
    assert ev.majority_vote(["7", "7", "8"], [1.0, 0.5, 0.0]) == ("7", 2, 0.75)  # the bloc's mean reward
    # no answer, no vote: three unanswered samples do not outvote one answer, and none at all scores 0
    assert ev.majority_vote([None, None, None, "8"], [0, 0, 0, 1]) == ("8", 1, 1)
    assert ev.majority_vote([None, None], [0, 0]) == (None, 0, 0.0)
    infos = [{"extracted": "7"}, {"extracted": "7"}, {"extracted": "8"}, {"extracted": None}, {}]
    assert ev.answer_keys(infos, ["a", "b", "c", "d", "e"]) == ["7", "7", "8", None, None]
    # the gold answer is never a vote, whatever key a task stores it under
    gold = [{"answer": 7, "extracted": None}, {"answer": 7, "extracted": "9"}]
    assert ev.answer_keys(gold, ["x", "9"]) == [None, "9"]
    # a task that extracts nothing at all is voted on by its normalized text
    assert ev.answer_keys([{}, {"answer": 7}], ["a  b", " a b\n"]) == ["a b", "a b"]
    assert ev.default_ks(4) == [1, 2, 4] and ev.default_ks(6) == [1, 2, 4, 6] and ev.default_ks(1) == [1]


def test_majority_answer_is_what_addition_responses_said():
    """The issue's case: addition's outcomes used to carry the gold answer, and the vote read it."""
    t = build_task("addition")
    e = next(x for x in t.examples("test") + t.examples("train") if x.id == "addition-7+5")
    responses = ["twelve", "no idea", "twelve", "13", "The answer is 13.", "12"]
    outs = [t.score(e, r) for r in responses]
    keys = ev.answer_keys([o.info for o in outs], responses)
    assert keys == [None, None, None, "13", "13", "12"]
    assert ev.majority_vote(keys, [o.reward for o in outs]) == ("13", 2, 0.0)


class ItemGold(BaseTask):
    """Item i's gold answer is i % 3; a response answers its word count % 3 (nothing when it has no
    words). The reward depends on the item, so a sample scored against another item's example changes."""

    name = "item_gold"
    scorer_name = "words_mod_3"

    def examples(self, split):
        return [Example(f"q{i}", [{"role": "user", "content": f"Say something about {i}."}], {"answer": i % 3})
                for i in range(3)]

    def score(self, example, response):
        words = response.split()
        if not words:
            return Outcome(0.0, "Format error: no words.", {"extracted": None, "answer": example.meta["answer"]})
        got = len(words) % 3
        return Outcome(float(got == example.meta["answer"]), "", {"extracted": str(got), "answer": example.meta["answer"]})


def test_evaluate_scores_each_sample_against_its_own_item(tiny_model_and_tokenizer, monkeypatch):
    import credit.rollout as rollout

    model, tok = tiny_model_and_tokenizer
    real, seen = rollout.sample, {}

    def spy(*args, **kwargs):  # the real sampler; keeps which prompt each text was generated for
        seen["rollouts"] = real(*args, **kwargs)
        return seen["rollouts"]

    monkeypatch.setattr(rollout, "sample", spy)
    task = ItemGold()
    res = ev.evaluate(model, tok, task, n=4, max_new_tokens=6, batch_size=12, seed=3)
    r, exs, items = seen["rollouts"], task.examples("test"), res["items"]
    assert res["scorer"] == "words_mod_3" and [it["id"] for it in items] == [e.id for e in exs]
    moved = False
    for i, item in enumerate(items):
        mine = [r.texts[k] for k, g in enumerate(r.group) if g == i]
        outs = [task.score(exs[i], y) for y in mine]
        assert item["rewards"] == [o.reward for o in outs]
        assert (item["majority_answer"], item["majority_votes"], item["majority_reward"]) == \
            ev.majority_vote([o.info["extracted"] for o in outs], [o.reward for o in outs])
        moved |= [task.score(exs[(i + 1) % 3], y).reward for y in mine] != item["rewards"]
    assert moved  # these samples would have scored differently against the wrong item


def test_evaluate_is_consistent_with_its_items(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    res = ev.evaluate(model, tok, ItemGold(), n=4, max_new_tokens=5, batch_size=12, seed=3)
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
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "m"), "--task", "addition", "--limit", "2",
                              "-n", "2", "--max-new-tokens", "4", "--json", str(tmp_path / "e.json")])
    assert args.func(args) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["num_items"] == 2 and {"mean@2", "pass@1", "pass@2", "maj@2"} <= set(res)
    assert res["scorer"] == "strict"
    assert "mean@2" in capsys.readouterr().out
    args = parser.parse_args(["eval", "--model", str(tmp_path / "m"), "--task", "addition", "--limit", "1",
                              "-n", "1", "--max-new-tokens", "2", "--task-option", "scorer=lenient",
                              "--json", str(tmp_path / "l.json")])
    assert args.func(args) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "l.json").read_text())["scorer"] == "lenient"
    assert "scorer lenient" in capsys.readouterr().out
    args = parser.parse_args(["eval", "--model", str(tmp_path / "m"), "--task", "nope"])
    assert args.func(args) == 2 and "unknown task" in capsys.readouterr().err
    assert build_task("addition").examples("test")  # the task used above has a held-out split


def test_cli_eval_passes_chat_template_kwargs(tiny_model_and_tokenizer, tmp_path, monkeypatch, capsys):
    import credit.rollout as ro

    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    seen = []
    real = ro.encode_prompts

    def spy(tokenizer, conversations, *, chat_template_kwargs=None):
        seen.append(chat_template_kwargs)
        return real(tokenizer, conversations, chat_template_kwargs=chat_template_kwargs)

    monkeypatch.setattr(ro, "encode_prompts", spy)
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "m"), "--limit", "1", "-n", "1", "--max-new-tokens", "2",
                              "--backend", "loop", "--chat-template-kwargs", "{enable_thinking: false}"])
    assert args.func(args) == 0, capsys.readouterr().err
    assert seen == [{"enable_thinking": False}]
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--chat-template-kwargs", "[1, 2]"])
    assert "give a mapping" in capsys.readouterr().err
