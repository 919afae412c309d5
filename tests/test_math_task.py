"""Math tasks: the quickstart addition baseline, reasoning-gym and GSM-style files."""

import random

import pytest

from credit.tasks import DataError, build_task
from credit.tasks.math import AdditionTask, GSMTask, ReasoningGymTask, parse_number

FIX = "tests/fixtures/math"
BAD_RESPONSES = ["", "   \n", "7" * 1_000_000, "caf\udce9 7", b"\xff\xfe7", None]


# ---------------------------------------------------------------- addition (peer baseline)


def test_addition_matches_peer_baseline_exactly():
    pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
    random.Random(1234).shuffle(pairs)
    t = build_task("addition")
    test, train = t.examples("test"), t.examples("train")
    assert len(test) == 60 and len(train) == 340
    assert [(e.meta["a"], e.meta["b"]) for e in test] == pairs[:60]
    assert [(e.meta["a"], e.meta["b"]) for e in train] == pairs[60:]
    a, b = pairs[0]
    assert test[0].messages == [{"role": "user", "content": f"What is {a} + {b}? Answer with just the number."}]
    assert not {e.id for e in test} & {e.id for e in train}


def _pair(task, a, b):
    return next(x for x in task.examples("train") + task.examples("test") if (x.meta["a"], x.meta["b"]) == (a, b))


@pytest.mark.parametrize("response, reward, extracted", [
    ("12", 1.0, "12"),
    ("The answer is 12.", 1.0, "12"),
    ("7 + 5 = 12", 1.0, "12"),             # the final number counts, the question's numbers do not
    ("**12**", 1.0, "12"),
    ("(12)\n", 1.0, "12"),
    ("12.0", 1.0, "12"),                   # an exact decimal equal to the sum is that number
    ("12.00!", 1.0, "12"),
    ("13", 0.0, "13"),
    ("12.5", 0.0, "12.5"),
    ("-12", 0.0, "-12"),                   # a different number
    ("x = \u221212", 0.0, "-12"),          # the minus sign U+2212 is a sign too
    ("12 is wrong, it is 13", 0.0, "13"),
    ("0012", 1.0, "12"),
    ("1,012", 0.0, "1012"),                # a thousands separator, not a list
    ("20-8", 0.0, "8"),                    # after a digit "-" is an operator, not a sign
])
def test_addition_strict_reads_the_final_number(response, reward, extracted):
    t = AdditionTask()
    o = t.score(_pair(t, 7, 5), response)
    assert (o.reward, o.info["extracted"], o.feedback) == (reward, extracted, "")


@pytest.mark.parametrize("response, problem", [
    ("twelve", "no_final_number"),
    ("12 apples", "no_final_number"),      # the answer must end the response, as the prompt asks
    ("<answer>12</answer>", "no_final_number"),
    ("a12", "no_final_number"),            # glued to a word
    ("v1.12", "no_final_number"),
    ("1,2,12", "no_final_number"),         # commas that are not thousands separators
    ("\uff11\uff12", "no_final_number"),   # fullwidth digits: ASCII only
])
def test_addition_strict_format_errors(response, problem):
    t = AdditionTask()
    o = t.score(_pair(t, 7, 5), response)
    assert o.reward == 0.0 and o.info == {"format_error": problem, "extracted": None, "gold": 12}
    assert o.feedback.startswith("Format error") and "end with a number" in o.feedback


def test_addition_lenient_is_the_peer_rule():
    t = AdditionTask(scorer="lenient")
    e = _pair(t, 7, 5)
    assert t.scorer_name == "lenient" and AdditionTask().scorer_name == "strict"
    assert t.score(e, "12 apples").reward == 1.0
    assert t.score(e, "12 is wrong, it is 13").reward == 1.0  # any number equal to a+b counts
    assert t.score(e, " ".join(str(i) for i in range(1, 41))).info["extracted"] == "12"
    wrong = t.score(e, "10 11 13")
    assert (wrong.reward, wrong.info["extracted"], wrong.feedback) == (0.0, "13", "")
    assert t.score(e, "-12").reward == 0.0
    no_num = t.score(e, "twelve")
    assert no_num.reward == 0.0 and "no number" in no_num.feedback and no_num.info["extracted"] is None
    with pytest.raises(ValueError, match="scorer must be one of strict, lenient"):
        AdditionTask(scorer="loose")


@pytest.mark.parametrize("scorer", ["strict", "lenient"])
def test_addition_answer_feedback(scorer):
    t = AdditionTask(answer_feedback=True, scorer=scorer)
    e = _pair(t, 7, 5)
    assert t.score(e, "13").feedback == "The correct answer is 12."
    assert t.score(e, "12").feedback == ""
    assert AdditionTask(scorer=scorer).score(e, "13").feedback == ""  # no leak by default


@pytest.mark.parametrize("bad", BAD_RESPONSES)
def test_addition_bad_responses_score_zero(bad):
    t = AdditionTask()
    o = t.score(t.examples("test")[0], bad)
    assert o.reward == 0.0 and o.feedback.startswith("Format error")


@pytest.mark.parametrize("opts", [{"low": 5, "high": 2}, {"n_test": 401}, {"seed": "x"}, {"answer_feedback": 1},
                                  {"n_train": 400}, {"low": 1.5}, {"op": "/"}, {"op": "x"}])
def test_addition_bad_options(opts):
    with pytest.raises(ValueError):
        AdditionTask(**opts)


@pytest.mark.parametrize("op, shown, value", [("*", "×", 7 * 13), ("-", "-", 7 - 13)])
def test_other_operations_keep_the_pairs_and_the_strict_rule(op, shown, value):
    plus, other = AdditionTask(), AdditionTask(op=op)
    assert [(e.meta["a"], e.meta["b"]) for e in other.examples("test")] == \
           [(e.meta["a"], e.meta["b"]) for e in plus.examples("test")]
    ex = next(e for e in build_task("addition", op=op).examples("train") if (e.meta["a"], e.meta["b"]) == (7, 13))
    assert ex.messages[0]["content"] == f"What is 7 {shown} 13? Answer with just the number."
    assert ex.id == f"addition-7{op}13"
    assert other.score(ex, f"7 {shown} 13 = {value}").reward == 1.0
    assert other.score(ex, "20").reward == 0.0  # the sum is not the answer any more
    assert other.score(ex, f"{value} or 20").reward == 0.0  # the final number is the answer


def test_addition_options_change_range():
    t = AdditionTask(low=0, high=2, n_test=3, seed=1)
    assert len(t.examples("test")) == 3 and len(t.examples("train")) == 6
    with pytest.raises(ValueError):
        t.examples("validation")


# ---------------------------------------------------------------- reasoning-gym


@pytest.fixture(scope="module")
def rg():
    return ReasoningGymTask("basic_arithmetic", size=60, seed=3, n_test=10, min_terms=2, max_terms=3)


def test_reasoning_gym_splits(rg):
    train, test = rg.examples("train"), rg.examples("test")
    assert len(test) >= 10 and len(train) + len(test) == 60
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    again = ReasoningGymTask("basic_arithmetic", size=60, seed=3, n_test=10, min_terms=2, max_terms=3)
    assert [e.id for e in again.examples("test")] == [e.id for e in test]
    assert [e.prompt for e in again.examples("test")] == [e.prompt for e in test]
    assert "<answer>" in test[0].messages[0]["content"]


def test_reasoning_gym_scoring(rg):
    e = rg.examples("test")[0]
    ans = e.meta["answer"]
    ok = rg.score(e, f"Let me compute.\n<answer>{ans}</answer>")
    assert ok.reward == 1.0 and ok.info["score"] == 1.0
    wrong = rg.score(e, f"<answer>{ans}</answer> hmm, no: <answer>{int(ans) + 1}</answer>")  # last tag counts
    assert wrong.reward == 0.0 and wrong.feedback == ""
    fmt = rg.score(e, str(ans))
    assert fmt.reward == 0.0 and "<answer>" in fmt.feedback
    assert rg.score(e, "<answer> </answer>").feedback.startswith("Format error")
    loose = ReasoningGymTask("basic_arithmetic", size=60, seed=3, n_test=10, min_terms=2, max_terms=3,
                             require_tags=False, answer_feedback=True)
    e2 = loose.examples("test")[0]
    assert loose.score(e2, f" {ans}\n").reward == 1.0
    assert loose.score(e2, "<answer>999999</answer>").feedback == f"The correct answer is {ans}."


@pytest.mark.parametrize("bad", BAD_RESPONSES)
def test_reasoning_gym_bad_responses(rg, bad):
    o = rg.score(rg.examples("test")[0], bad)
    assert o.reward == 0.0 and o.feedback.startswith("Format error")


def test_reasoning_gym_through_build_task():
    t = build_task("reasoning_gym", dataset="simple_equations", size=8, n_test=2)
    assert t.name == "reasoning_gym" and t.dataset_name == "simple_equations"
    e = t.examples("test")[0]
    assert t.score(e, f"<answer>{e.meta['answer']}</answer>").reward == 1.0


def test_reasoning_gym_bad_options():
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset"):
        ReasoningGymTask("basic_arithmatic")
    with pytest.raises(ValueError, match="rejected the configuration"):
        ReasoningGymTask("basic_arithmetic", size=5, n_test=1, not_an_option=3)
    with pytest.raises(ValueError):
        ReasoningGymTask("basic_arithmetic", size=5, n_test=6)
    with pytest.raises(ValueError):
        ReasoningGymTask("basic_arithmetic", threshold=0)


def test_reasoning_gym_scorer_failure_is_a_wrong_answer(monkeypatch):
    t = ReasoningGymTask("basic_arithmetic", size=4, seed=0, n_test=1, answer_feedback=True)
    e = t.examples("test")[0]

    def broken(answer, entry):
        raise KeyError("oops")

    monkeypatch.setattr(t._dataset, "score_answer", broken)
    o = t.score(e, "<answer>7</answer>")
    assert o.reward == 0.0 and o.info["scorer_error"] == "KeyError: 'oops'" and o.info["extracted"] == "7"
    assert o.feedback == f"The correct answer is {e.meta['answer']}."  # a 0 explains itself, as any other


def test_reasoning_gym_partial_scores_keep_raw_value():
    t = ReasoningGymTask("gsm_symbolic", size=4, seed=0, n_test=1)
    e = t.examples("test")[0]
    o = t.score(e, "<answer>not a number</answer>")
    assert o.reward == 0.0 and 0.0 <= o.info["score"] < 1.0


# ---------------------------------------------------------------- GSM-style files


def test_gsm_load_split_and_score():
    t = GSMTask(f"{FIX}/gsm.jsonl", n_test=2, seed=0)
    train, test = t.examples("train"), t.examples("test")
    assert len(train) == 4 and len(test) == 2  # the blank line is not a row
    assert not {e.id for e in train} & {e.id for e in test}
    assert [e.id for e in GSMTask(f"{FIX}/gsm.jsonl", n_test=2, seed=0).examples("test")] == [e.id for e in test]
    by_q = {e.prompt: e for e in train + test}
    farm = next(e for q, e in by_q.items() if "chickens" in q)
    assert farm.meta["answer"] == "1000"
    assert t.score(farm, "1200 - 200 = 1000.\n<answer>1,000</answer>").reward == 1.0
    assert t.score(farm, "So the answer is\n#### 1000").reward == 1.0  # GSM's own marker works too
    assert t.score(farm, "<answer>$1000.00</answer>").reward == 1.0
    assert t.score(farm, "<answer>999</answer>").reward == 0.0
    half = next(e for q, e in by_q.items() if "Half" in q)
    assert t.score(half, "<answer>2.5</answer>").reward == 1.0
    assert t.score(half, "<answer>2</answer>").reward == 0.0
    neg = next(e for q, e in by_q.items() if "degrees" in q)
    assert t.score(neg, "<answer>-3</answer>").reward == 1.0
    assert t.score(neg, "<answer>3</answer>").reward == 0.0
    assert "no final answer" in t.score(neg, "It is -3 degrees.").feedback
    assert "not a number" in t.score(neg, "<answer>minus three</answer>").feedback


def test_parse_number():
    assert str(parse_number("The total is $1,234.50.")) == "1234.50"
    assert parse_number("none") is None
    assert parse_number("5,6") == 6  # commas only separate thousands: "5,6" is two numbers
    assert parse_number("\uff17") is None  # ASCII digits only


def test_gsm_final_answer_is_the_later_marker_and_exact():
    t = GSMTask(f"{FIX}/gsm.jsonl", n_test=2, seed=0)
    farm = next(e for e in t.examples("train") + t.examples("test") if "chickens" in e.prompt)
    assert t.score(farm, "<answer>1000</answer>\n#### 999").reward == 0.0  # the marker comes last
    assert t.score(farm, "#### 999\n<answer>1000</answer>").reward == 1.0  # the tag comes last
    assert t.score(farm, "<answer>1,000.00</answer>").info["extracted"] == "1000"
    # 33 digits: Decimal.normalize() would round this to 28 and merge it with its neighbours
    big = "123456789012345678901234567890123"
    assert t.score(farm, f"<answer>{big}</answer>").info["extracted"] == big
    assert t.score(farm, "no answer").info["extracted"] is None


@pytest.mark.parametrize("line,field,problem", [
    ('{"question": "Q?", "answer": "no marker"}', "answer", "####"),
    ('{"question": "Q?", "answer": "x\\n#### seven"}', "answer", "not a number"),
    ('{"answer": "x\\n#### 7"}', "question", "missing"),
    ('{"question": 3, "answer": "x\\n#### 7"}', "question", "expected a string"),
    ('{"question": "Q?", "answer": "x\\n#### 7"', None, "not valid JSON"),
    ('["question", "answer"]', None, "JSON object"),
])
def test_gsm_bad_rows_name_file_line_field(tmp_path, line, field, problem):
    good = open(f"{FIX}/gsm.jsonl").read().splitlines()[0]
    p = tmp_path / "bad.jsonl"
    p.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        GSMTask(p)
    assert err.value.line == 2 and err.value.field == field and err.value.path == str(p)
    assert problem in str(err.value) and f"{p}:2" in str(err.value)


def test_gsm_invalid_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"question": "a", "answer": "#### 1"}\n{"question": "\xff", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match="UTF-8") as err:
        GSMTask(p)
    assert err.value.line == 2
    with pytest.raises(DataError, match="cannot read"):
        GSMTask(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="path="):
        GSMTask()
