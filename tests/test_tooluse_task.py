"""Tool use: ToolAlpaca files (ReAct calls) and BFCL rows with possible answers (fixtures and the
bfcl-eval package's own simple / multiple / parallel files)."""

import json
import shutil

import pytest

from credit.tasks import DataError, build_task
from credit.tasks.tooluse import BFCLTask, ParseError, ToolAlpacaTask, bfcl_data_dir, parse_calls

FIX = "tests/fixtures/tooluse"
BAD_RESPONSES = ["", "\n\t", "Action: f\nAction Input: {}\n" * 50_000, "Action: f\nAction Input: {\"a\": \"\udc80\"}",
                 b"\x80abc", ["Action: f"]]


# ---------------------------------------------------------------- parsing


def test_parse_forms_agree():
    want = [("f", {"a": 1}), ("g.h", {"b": "x"})]
    forms = [
        'Thought: go\nAction: f\nAction Input: {"a": 1}\nObservation: ok\nAction: g.h\nAction Input: {"b": "x"}\nFinal Answer: done',
        '[{"name": "f", "arguments": {"a": 1}}, {"name": "g.h", "arguments": {"b": "x"}}]',
        '```json\n[{"f": {"a": 1}}, {"g.h": {"b": "x"}}]\n```',
        '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"name": "g.h", "arguments": "{\\"b\\": \\"x\\"}"}</tool_call>',
        '[f(a=1), g.h(b="x")]',
    ]
    for text in forms:
        assert [(c.name, c.args) for c in parse_calls(text)] == want, text


@pytest.mark.parametrize("text,msg", [
    ("Action: f\nAction Input: {not json}", "not valid JSON"),
    ("Action: f\nAction Input: [1, 2]", "must be a JSON object"),
    ("Action: f\nThought: forgot the input", "Action Input"),
    ("I would call the weather API.", "no function call"),
    ("[f(1, 2)]", "positional"),
    ("[f(a=open('x'))]", "not a literal"),
    ('[{"name": "f", "arguments": [1]}]', "must be a JSON object"),
])
def test_parse_errors(text, msg):
    with pytest.raises(ParseError, match=msg):
        parse_calls(text)


# ---------------------------------------------------------------- ToolAlpaca


@pytest.fixture(scope="module")
def ta():
    return ToolAlpacaTask(f"{FIX}/toolalpaca_eval.json", n_test=1, seed=0)


def _ex(task, eid):
    return next(e for e in task.examples("train") + task.examples("test") if e.id == eid)


def test_toolalpaca_load_and_split(ta):
    train, test = ta.examples("train"), ta.examples("test")
    assert len(train) + len(test) == 6
    assert len({e.meta["api"] for e in test}) == 1  # n_test counts whole APIs: test tools are unseen
    assert not {e.meta["api"] for e in train} & {e.meta["api"] for e in test}
    assert [e.id for e in ToolAlpacaTask(f"{FIX}/toolalpaca_eval.json", n_test=1, seed=0).examples("test")] == \
        [e.id for e in test]
    by_instr = ToolAlpacaTask(f"{FIX}/toolalpaca_eval.json", n_test=2, split_by="instruction")
    assert len(by_instr.examples("test")) == 2
    e = _ex(ta, "toolalpaca-Axolotl-0")
    assert "searchAxolotlImages" in e.messages[0]["content"] and "Action Input:" in e.messages[0]["content"]
    assert e.prompt == "Hey, can you show me a random picture of an axolotl?"
    joke = _ex(ta, "toolalpaca-Jokes-0")  # from the Instances (training) layout
    assert joke.meta["calls"] == [{"name": "getJoke", "arguments": {"category": "programming"}}]


def test_toolalpaca_scoring(ta):
    e = _ex(ta, "toolalpaca-Axolotl-2")  # two searchAxolotlImages calls, golden "gender": "" = not given
    small = 'Action: searchAxolotlImages\nAction Input: {"color": "wild", "size": "small", "page": 1}\n'
    large = 'Action: searchAxolotlImages\nAction Input: {"color": "Wild ", "size": "large", "page": "1", "gender": ""}\n'
    assert ta.score(e, "Thought: two searches\n" + small + "Observation: ...\n" + large + "Final Answer: ok").reward == 1.0
    assert ta.score(e, large + small).reward == 1.0  # order does not matter
    assert ta.score(e, small).reward == 0.0  # a call is missing
    assert ta.score(e, small + large + small).reward == 0.0  # an extra call
    wrong = ta.score(e, small + large.replace("large", "medium"))
    assert wrong.reward == 0.0 and wrong.feedback == ""  # off by default: it would leak the answer
    rnd = _ex(ta, "toolalpaca-Axolotl-0")
    assert ta.score(rnd, "Action: getRandomAxolotlImage\nAction Input: {}").reward == 1.0
    assert ta.score(rnd, 'Action: getRandomAxolotlImage\nAction Input: {"page": 2}').reward == 0.0
    assert ta.score(rnd, '[{"name": "getRandomAxolotlImage", "arguments": {}}]').reward == 1.0


def test_toolalpaca_call_feedback():
    t = ToolAlpacaTask(f"{FIX}/toolalpaca_eval.json", n_test=1, call_feedback=True)
    e = _ex(t, "toolalpaca-Axolotl-1")
    o = t.score(e, 'Action: getAxolotlFacts\nAction Input: {"category": "habitat", "limit": 5}')
    assert o.feedback == 'getAxolotlFacts: argument \'limit\' is 5, expected 3'
    o = t.score(e, 'Action: getRandomAxolotlImage\nAction Input: {}')
    assert "missing a call to getAxolotlFacts" in o.feedback and "unexpected call to getRandomAxolotlImage" in o.feedback
    o = t.score(e, "Action: getAxolotlFacts\nAction Input: {oops}")
    assert o.reward == 0.0 and o.feedback.startswith("Format error") and "not valid JSON" in o.feedback


@pytest.mark.parametrize("bad", BAD_RESPONSES)
def test_toolalpaca_bad_responses(ta, bad):
    o = ta.score(ta.examples("test")[0], bad)
    assert o.reward == 0.0 and o.feedback.startswith("Format error")


def _apis():
    return json.load(open(f"{FIX}/toolalpaca_eval.json"))


@pytest.mark.parametrize("mutate,field", [
    (lambda a: a[1].pop("Name"), "Name"),
    (lambda a: a[1]["Golden_Answers"].pop(), "Golden_Answers"),
    (lambda a: a[1]["Golden_Answers"][0][0].__setitem__("Action_Input", "{bad json"), "Golden_Answers[0][0].Action_Input"),
    (lambda a: a[1]["Golden_Answers"][1][0].pop("Action"), "Golden_Answers[1][0].Action"),
    (lambda a: a[1].pop("NLDocumentation"), "NLDocumentation"),
    (lambda a: a[1]["Instructions"].__setitem__(0, ""), "Instructions[0]"),
    (lambda a: a[1].pop("Golden_Answers"), "Golden_Answers"),
    (lambda a: a[2]["Instances"][0]["intermediate_steps"].__setitem__(0, ["getJoke"]), "Instances[0].intermediate_steps[0]"),
])
def test_toolalpaca_bad_rows(tmp_path, mutate, field):
    apis = _apis()
    mutate(apis)
    p = tmp_path / "ta.json"
    text = json.dumps(apis, indent=4)
    p.write_text(text)
    bad_index = 2 if field.startswith("Instances") else 1
    start = text.index(json.dumps(apis[bad_index], indent=4).splitlines()[1].strip())
    with pytest.raises(DataError) as err:
        ToolAlpacaTask(p)
    assert err.value.field == field and err.value.path == str(p)
    assert err.value.line == text.count("\n", 0, start)  # the line of the object's opening brace


def test_toolalpaca_bad_options():
    for opts in ({}, {"path": f"{FIX}/toolalpaca_eval.json", "split_by": "tool"},
                 {"path": f"{FIX}/toolalpaca_eval.json", "n_test": 1.5},
                 {"path": f"{FIX}/toolalpaca_eval.json", "call_feedback": "yes"}):
        with pytest.raises(ValueError):
            ToolAlpacaTask(**opts)


# ---------------------------------------------------------------- BFCL fixtures


@pytest.fixture(scope="module")
def bf():
    return BFCLTask(f"{FIX}/bfcl/BFCL_v4_fixture.json", n_test=1, seed=0)


def test_bfcl_fixture_scoring(bf):
    tri = _ex(bf, "bfcl-simple_python_0")
    assert tri.messages[0]["role"] == "system" and "calculate_triangle_area" in tri.messages[0]["content"]
    assert tri.prompt.startswith("Find the area")
    assert bf.score(tri, '[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}]').reward == 1.0
    assert bf.score(tri, "[calculate_triangle_area(base=10, height=5, unit='units')]").reward == 1.0
    assert bf.score(tri, "[calculate_triangle_area(base=10, height=5, unit='cm')]").reward == 0.0
    assert bf.score(tri, "[calculate_triangle_area(base=10)]").reward == 0.0  # required height missing
    assert bf.score(tri, "[calculate_triangle_area(base=10, height=5, color=1)]").reward == 0.0  # unknown arg
    assert bf.score(tri, "[calculate_triangle_area(base='10', height=5)]").reward == 0.0  # wrong type
    conv = _ex(bf, "bfcl-simple_python_1")
    assert bf.score(conv, '[units.convert(value=2.5, from_unit="Kilo-grams", to_unit="LBS")]').reward == 1.0
    assert bf.score(conv, '[units_convert(value=2.5, from_unit="kg", to_unit="lb")]').reward == 1.0  # BFCL allows . -> _
    assert bf.score(conv, '[units.convert(value=2, from_unit="kg", to_unit="lb")]').reward == 0.0
    par = _ex(bf, "bfcl-parallel_0")
    both = ['spotify.play(artist="Maroon 5", duration=15)', 'spotify.play(artist="Taylor Swift", duration=20)']
    assert bf.score(par, f"[{both[0]}, {both[1]}]").reward == 1.0  # any order
    assert bf.score(par, f"[{both[0]}]").reward == 0.0
    assert bf.score(par, f"[{both[0]}, {both[0]}]").reward == 0.0  # one call cannot satisfy two references
    swapped = '[spotify.play(artist="Maroon 5", duration=20), spotify.play(artist="Taylor Swift", duration=15)]'
    o = bf.score(par, swapped)
    assert o.reward == 0.0 and o.feedback == ""


def test_bfcl_call_feedback():
    t = BFCLTask(f"{FIX}/bfcl/BFCL_v4_fixture.json", n_test=1, call_feedback=True)
    tri = _ex(t, "bfcl-simple_python_0")
    assert t.score(tri, "[calculate_triangle_area(base=10, height=6)]").feedback == \
        "calculate_triangle_area: argument 'height' is 6, expected one of [5]"
    assert "expected 1 call(s), got 2" in t.score(tri, "[f(a=1), g(b=2)]").feedback
    assert t.score(tri, "[area(base=10, height=5)]").feedback == "expected a call to calculate_triangle_area, got area"


@pytest.mark.parametrize("bad", BAD_RESPONSES)
def test_bfcl_bad_responses(bf, bad):
    o = bf.score(bf.examples("test")[0], bad)
    assert o.reward == 0.0 and o.feedback.startswith("Format error")


def _copy_bfcl(tmp_path):
    d = tmp_path / "bfcl"
    shutil.copytree(f"{FIX}/bfcl", d)
    return d / "BFCL_v4_fixture.json", d / "possible_answer" / "BFCL_v4_fixture.json"


def _edit_line(path, n, fn):
    lines = path.read_text().splitlines()
    row = json.loads(lines[n - 1])
    fn(row)
    lines[n - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("which,fn,field", [
    ("q", lambda r: r.pop("function"), "function"),
    ("q", lambda r: r.__setitem__("question", [["hi"]]), "question"),
    ("q", lambda r: r["function"][0].pop("name"), "function[0]"),
    ("q", lambda r: r.__setitem__("id", "simple_python_9"), "id"),
    ("a", lambda r: r.__setitem__("ground_truth", [{"f": {"x": 1}}]), "ground_truth[0].f"),
    ("a", lambda r: r.__setitem__("ground_truth", [{"f": {}, "g": {}}]), "ground_truth[0]"),
    ("a", lambda r: r.pop("ground_truth"), "ground_truth"),
])
def test_bfcl_bad_rows(tmp_path, which, fn, field):
    q, a = _copy_bfcl(tmp_path)
    target = q if which == "q" else a
    _edit_line(target, 2, fn)
    with pytest.raises(DataError) as err:
        BFCLTask(q)
    assert (err.value.path, err.value.line, err.value.field) in {(str(target), 2, field), (str(a), 2, field)}
    assert f":2:" in str(err.value)


def test_bfcl_bad_options():
    with pytest.raises(ValueError, match="unknown BFCL categories"):
        BFCLTask(categories=["simple", "multi_turn_base"])
    with pytest.raises(ValueError):
        BFCLTask(categories="simple")
    with pytest.raises(ValueError):
        BFCLTask(answer_path="x.json")


# ---------------------------------------------------------------- BFCL from the bfcl-eval package


def _reference_response(ground_truth):
    """One correct answer built from the possible answers (first allowed value; omit optional ones)."""
    def first(opts):
        return pick(next(v for v in opts if v != ""))

    def pick(v):
        if isinstance(v, dict) and all(isinstance(x, list) for x in v.values()):
            return {k: first(x) for k, x in v.items() if any(y != "" for y in x)}
        return [pick(x) for x in v] if isinstance(v, list) else v

    return json.dumps([{"name": n, "arguments": {k: first(v) for k, v in a.items() if any(x != "" for x in v)}}
                       for n, a in ground_truth])


def test_bfcl_shipped_categories():
    assert bfcl_data_dir() is not None, "bfcl-eval==2026.3.23 (--no-deps) should be installed"
    t = build_task("bfcl", seed=0, n_test=0.2)
    train, test = t.examples("train"), t.examples("test")
    assert len(train) + len(test) == 800  # simple 400 + multiple 200 + parallel 200
    assert {e.meta["category"] for e in train} == {"simple", "multiple", "parallel"}
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert [e.id for e in build_task("bfcl", seed=0, n_test=0.2).examples("test")] == [e.id for e in test]
    for e in train + test:
        assert t.score(e, _reference_response(e.meta["ground_truth"])).reward == 1.0, e.id
    # hand-checked: simple_python_0 is the triangle area with base 10, height 5
    e = _ex(t, "bfcl-simple_python_0")
    assert t.score(e, "[calculate_triangle_area(base=10, height=5)]").reward == 1.0
    assert t.score(e, "[calculate_triangle_area(base=5, height=10)]").reward == 0.0
    p = _ex(t, "bfcl-parallel_0")
    assert t.score(p, '[spotify.play(artist="Maroon 5", duration=15), spotify.play(artist="Taylor Swift", duration=20)]').reward == 1.0
    assert t.score(p, '[spotify.play(artist="Maroon 5", duration=20), spotify.play(artist="Taylor Swift", duration=15)]').reward == 0.0


@pytest.mark.parametrize("hostile", [
    "[" * 30000 + "]" * 30000,
    '[{"name": "calculate_triangle_area", "arguments": {"base": ' + "9" * 5000 + ', "height": 5}}]',
    "[calculate_triangle_area(base=" + "9" * 5000 + ", height=5)]",
    '[{"name": "f", "arguments": {"a": ' + "[" * 900 + "]" * 900 + "}}]",
    'Action: f\nAction Input: {"a": ' + "[" * 900 + "]" * 900 + "}",
])
def test_hostile_responses_never_raise(bf, ta, hostile):
    for task in (bf, ta):
        o = task.score(task.examples("test")[0], hostile)
        assert o.reward == 0.0 and o.feedback.startswith("Format error"), o


def test_calls_with_mixed_constants_are_compared_not_crashed(ta):
    # Sorting the normalized calls compared ("const", None) with ("const", True): a TypeError in scoring.
    e = ta.examples("train")[0]
    o = ta.score(e, '[{"name": "f", "arguments": {"a": [null]}}, {"name": "f", "arguments": {"a": [true]}}]')
    assert o.reward == 0.0 and o.info["n_calls"] == 2 and o.info["extracted"] is not None


def test_every_json_value_and_fence_is_read():
    one = '[{"name": "f", "arguments": {"a": 1}}]'
    assert [c.name for c in parse_calls(f"{one}\nNo, wait: [{{\"name\": \"g\", \"arguments\": {{}}}}]")] == ["f", "g"]
    assert [c.name for c in parse_calls(f"```json\n{one}\n```\nor\n```json\n{one}\n```")] == ["f", "f"]
    assert [c.name for c in parse_calls('[f(a={"x": 1})]')] == ["f"]  # Python syntax with a dict inside
    with pytest.raises(ParseError, match="more than one JSON value"):
        parse_calls('Action: f\nAction Input: {"a": 1} {"a": 2}')
    with pytest.raises(ParseError, match="JSON fragments"):
        parse_calls(one + " {" * 100)
