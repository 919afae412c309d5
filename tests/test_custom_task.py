"""Bring your own task and reward (``task.name: prompts``), chat-template variables, and the README's
worked example run end to end on the tiny model."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from credit.tasks import build_task
from credit.tasks.base import BaseTask, DataError, Example
from credit.tasks.custom import PromptTask, RewardFunctionError

README = Path(__file__).parents[1] / "README.md"


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def returning(value):
    """A reward function that returns ``value`` whatever it is given (the return-form tests)."""
    def reward(prompts, responses, examples):
        return value
    return reward


ROWS = [{"q": f"Question {i}?", "gold": str(i), "uid": f"u{i}"} for i in range(10)]


def gold(example: Example) -> str:
    return next(r["gold"] for r in ROWS if r["q"] == example.prompt)


# ----------------------------------------------------------------------------- data


def test_prompts_from_strings_and_chats_with_system_prompt_ids_and_seeded_split(tmp_path):
    chat = [{"role": "user", "content": "Earlier turn"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Chat question?"}]
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"q": chat, "gold": "c", "uid": "chat"}])
    kw = dict(path=path, prompt_field="q", answer_field="gold", id_field="uid", system_prompt="Be brief.", n_test=3)
    task = build_task("prompts", **kw)
    train, test = task.examples("train"), task.examples("test")
    assert len(test) == 3 and len(train) == 8
    assert {e.id for e in train} | {e.id for e in test} == {r["uid"] for r in ROWS} | {"chat"}
    by_id = {e.id: e for e in train + test}
    assert by_id["u4"].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question 4?"}]
    assert by_id["chat"].messages == [{"role": "system", "content": "Be brief."}, *chat]
    assert by_id["chat"].prompt == "Chat question?" and by_id["u4"].meta["answer"] == "4"
    # the split is a function of the seed: the same seed gives the same held-out ids, another seed others
    assert [e.id for e in build_task("prompts", **kw).examples("test")] == [e.id for e in test]
    others = [{e.id for e in build_task("prompts", **{**kw, "seed": s}).examples("test")} for s in range(1, 6)]
    assert any(o != {e.id for e in test} for o in others)


def test_test_path_and_default_ids(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS[:4])
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[4:6])
    task = build_task("prompts", path=train, test_path=test, prompt_field="q", answer_field="gold")
    assert [e.id for e in task.examples("train")] == ["line1", "line2", "line3", "line4"]
    assert [e.id for e in task.examples("test")] == ["test:line1", "test:line2"]
    with pytest.raises(ValueError, match="drop n_test"):
        build_task("prompts", path=train, test_path=test, prompt_field="q", answer_field="gold", n_test=1)


def test_parquet_and_datasets_folders(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    task = build_task("prompts", path=str(tmp_path / "d.parquet"), prompt_field="q", answer_field="gold", n_test=0.2)
    assert sorted(e.prompt for e in task.examples("train") + task.examples("test")) == sorted(r["q"] for r in ROWS)
    assert len(task.examples("test")) == 2

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:7]),
                               "validation": datasets.Dataset.from_list(ROWS[7:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    task = build_task("prompts", path=str(tmp_path / "dd"), prompt_field="q", answer_field="gold",
                      id_field="uid", test_split="validation")
    assert [e.id for e in task.examples("test")] == ["u7", "u8", "u9"]  # the saved split, nothing held out
    assert len(task.examples("train")) == 7
    with pytest.raises(DataError, match=r"has no split 'dev' \(it has train, validation\)"):
        build_task("prompts", path=str(tmp_path / "dd"), prompt_field="q", answer_field="gold", split="dev")

    datasets.Dataset.from_list([*ROWS[:3], {"q": None, "gold": "x", "uid": "b"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad: row 3: field 'q': expected a string or a chat \(a list of \{role, content\}\), got null"):
        build_task("prompts", path=str(tmp_path / "bad"), prompt_field="q", answer_field="gold")


@pytest.mark.parametrize("row, message", [
    ({"gold": "1"}, r"d\.jsonl:2: field 'q': missing"),
    ({"q": "  ", "gold": "1"}, r"d\.jsonl:2: field 'q': is empty"),
    ({"q": "Fine?"}, r"d\.jsonl:2: field 'gold': missing"),
    ({"q": "Fine?", "gold": True}, r"d\.jsonl:2: field 'gold': expected a string or an integer or a number, got a boolean"),
    ({"q": [{"role": "robot", "content": "hi"}], "gold": "1"}, r"d\.jsonl:2: field 'q\[0\]\.role': must be one of"),
    ({"q": [{"role": "user", "content": 3}], "gold": "1"}, r"d\.jsonl:2: field 'q\[0\]\.content': expected a string"),
    ({"q": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "gold": "1"},
     r"d\.jsonl:2: field 'q\[1\]': the last message must be a non-empty user turn"),
    ({"q": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "gold": "1"},
     r"d\.jsonl:2: field 'q': has its own system message while the task option system_prompt is set"),
    ('{"q": "broken', r"d\.jsonl:2: not valid JSON"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], row])
    with pytest.raises(DataError, match=message):
        build_task("prompts", path=path, prompt_field="q", answer_field="gold", system_prompt="S")


def test_duplicate_ids_and_missing_reward_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {**ROWS[1], "uid": "u0"}])
    with pytest.raises(ValueError, match=r"id 'u0' \(field 'uid'\) appears twice"):
        build_task("prompts", path=path, prompt_field="q", answer_field="gold", id_field="uid")
    with pytest.raises(ValueError, match="needs reward"):
        build_task("prompts", path=path, prompt_field="q")


# ----------------------------------------------------------------------------- rewards


@pytest.fixture
def qa(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", ROWS[:4])


def test_reward_receives_prompts_responses_and_row_copies(qa):
    seen = {}

    def reward(prompts, responses, examples):
        first = not seen
        seen.update(prompts=list(prompts), responses=list(responses), examples=[dict(r) for r in examples])
        if first:
            examples[0]["gold"] = "edited"  # must not leak into the task's data
        return [float(r == e["gold"]) for r, e in zip(responses, examples)]

    task = PromptTask(qa, prompt_field="q", reward=reward, n_test=0, system_prompt="Answer with a number.")
    exs = task.examples("train")
    rows = [next(r for r in ROWS if r["q"] == e.prompt) for e in exs]
    responses = [gold(exs[0]), "wrong", gold(exs[2]), gold(exs[3])]
    outcomes = task.score_batch(exs, responses)
    assert sorted(seen["prompts"]) == [r["q"] for r in ROWS[:4]]
    assert seen["prompts"] == [e.prompt for e in exs] and seen["responses"] == responses and seen["examples"] == rows
    assert [o.reward for o in outcomes] == [0.0, 0.0, 1.0, 1.0]  # row 0 was edited before it was compared
    assert task.score(exs[0], gold(exs[0])).reward == 1.0  # ... but the task's copy was not


def test_return_forms_weights_and_feedback(qa):
    def numbers(prompts, responses, examples):
        return [0.25, 1, 0.0, 0.5]

    def pairs(prompts, responses, examples):
        return [(1.0, "fb A"), (0.0, ""), (0.5, "fb C"), (0.0, None)]

    def dicts(prompts, responses, examples):
        return [{"reward": 1.0, "feedback": "fb B", "info": {"extracted": "x"}}, {"reward": 0.0}, {"reward": 1.0},
                {"reward": 0.5, "info": {"k": 1}}]

    task = PromptTask(qa, prompt_field="q", reward=[numbers, pairs, dicts], reward_weights=[2.0, 1.0, -0.5], n_test=0)
    outcomes = task.score_batch(task.examples("train"), ["a", "b", "c", "d"])
    # Σ w·r per response, by hand: 2·0.25+1−0.5 = 1.0; 2·1+0−0 = 2.0; 0+0.5−0.5 = 0.0; 2·0.5+0−0.25 = 0.75
    assert [o.reward for o in outcomes] == [1.0, 2.0, 0.0, 0.75]
    assert [o.feedback for o in outcomes] == ["fb A\n\nfb B", "", "fb C", ""]
    assert outcomes[0].info["extracted"] == "x" and outcomes[3].info["k"] == 1
    label = lambda fn: f"{fn.__module__}:{fn.__qualname__}"  # noqa: E731 - as credit.fit records a callable
    assert outcomes[2].info["rewards"] == {label(numbers): 0.0, label(pairs): 0.5, label(dicts): 1.0}


@pytest.mark.parametrize("returned, message", [
    ([1.0, 1.0], "returned 2 entries for 4 responses"),
    ("1111", "returned str '1111'; expected a list with one entry per response"),
    ({"reward": 1.0}, "returned dict"),
    (5.0, "returned float 5.0"),
    ([1.0, 1.0, True, 1.0], "returned bool True at index 2 (the reward must be a finite number)"),
    ([1.0, float("nan"), 1.0, 1.0], "returned float nan at index 1"),
    ([1.0, "1", 1.0, 1.0], "returned str '1' at index 1"),
    ([1.0, 1.0, 1.0, (1.0, "a", "b")], "returned tuple (1.0, 'a', 'b') at index 3"),
    ([1.0, (1.0, 7), 1.0, 1.0], "at index 1 (the feedback must be a string)"),
    ([{"reward": 1.0, "fedback": "x"}, 1, 1, 1], "at index 0 (unknown keys ['fedback'])"),
    ([{"feedback": "x"}, 1, 1, 1], "at index 0 (no 'reward' key)"),
])
def test_a_malformed_return_is_one_error_naming_function_and_value(qa, returned, message):
    fn = returning(returned)
    task = PromptTask(qa, prompt_field="q", reward=fn, n_test=0)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        task.score_batch(task.examples("train"), ["a", "b", "c", "d"])
    assert f"reward function '{fn.__module__}:{fn.__qualname__}'" in str(err.value) and "\n" not in str(err.value)


def test_an_exception_in_the_reward_keeps_its_traceback(qa):
    def reward(prompts, responses, examples):
        return [1 / 0 for _ in responses]

    task = PromptTask(qa, prompt_field="q", reward=reward, n_test=0)
    with pytest.raises(RewardFunctionError, match="raised ZeroDivisionError") as err:
        task.score_batch(task.examples("train"), ["a"] * 4)
    assert not isinstance(err.value, ValueError)  # the CLI must not flatten it into one line
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_reward_specs_from_files_and_modules(qa, tmp_path, monkeypatch):
    (tmp_path / "rw.py").write_text(
        "def exact(prompts, responses, examples):\n"
        "    return [(float(r == e['gold']), '' if r == e['gold'] else 'expected ' + e['gold'])\n"
        "            for r, e in zip(responses, examples)]\n"
        "def two_args(prompts, responses):\n    return []\n"
        "NOT_CALLABLE = 3\n")
    (tmp_path / "broken.py").write_text("def f(:\n")
    task = build_task("prompts", path=qa, prompt_field="q", reward=f"{tmp_path}/rw.py:exact", n_test=0)
    exs = task.examples("train")
    outcomes = task.score_batch(exs, [gold(exs[0]), gold(exs[1]), "x", gold(exs[3])])
    assert [o.reward for o in outcomes] == [1.0, 1.0, 0.0, 1.0] and outcomes[2].feedback == f"expected {gold(exs[2])}"
    monkeypatch.syspath_prepend(str(tmp_path))  # the same file as an importable module
    by_module = build_task("prompts", path=qa, prompt_field="q", reward="rw:exact", n_test=0)
    assert [by_module.score(e, gold(exs[2])).reward for e in exs] == [0.0, 0.0, 1.0, 0.0]

    for spec, message in [
        ("rw.exact", "must look like 'package.module:name' or 'path/to/file.py:name'"),
        (f"{tmp_path}/missing.py:f", "missing.py does not exist"),
        (f"{tmp_path}/rw.py:nope", "has no attribute 'nope'; it defines exact, two_args"),
        (f"{tmp_path}/rw.py:NOT_CALLABLE", "is a int, not callable"),
        (f"{tmp_path}/rw.py:two_args", r"must accept \(prompts, responses, examples\); its signature is \(prompts, responses\)"),
        (f"{tmp_path}/broken.py:f", r"broken\.py:1: invalid syntax"),
        ("no_such_package_xyz.mod:f", "cannot import module 'no_such_package_xyz.mod'"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_task("prompts", path=qa, prompt_field="q", reward=spec)
    with pytest.raises(ValueError, match=r"reward_weights must be a list of 1 finite number"):
        build_task("prompts", path=qa, prompt_field="q", reward=f"{tmp_path}/rw.py:exact", reward_weights=[1, 2])


def test_builtin_answer_match(qa):
    task = PromptTask(qa, prompt_field="q", answer_field="gold", n_test=0)
    exs = task.examples("train")
    responses = [f"<answer>{gold(exs[0])}</answer>", f"it is <answer> {gold(exs[1])}.0 </answer>", gold(exs[2]),
                 "<answer>4</answer>"]  # no row of qa has the answer 4
    outcomes = task.score_batch(exs, responses)
    assert [o.reward for o in outcomes] == [1.0, 1.0, 0.0, 0.0]
    assert "no <answer>" in outcomes[2].feedback and outcomes[2].info["extracted"] is None
    assert outcomes[3].feedback == "" and outcomes[3].info["extracted"] == "4"  # the answer is never revealed


def test_task_class_by_module_path(tmp_path):
    (tmp_path / "mytask.py").write_text(
        "from credit.tasks.base import BaseTask, Example, Outcome\n"
        "class Echo(BaseTask):\n"
        "    name = 'echo'\n"
        "    def __init__(self, word='hi'):\n"
        "        ex = [Example(id=str(i), messages=[{'role': 'user', 'content': f'{word} {i}'}]) for i in range(3)]\n"
        "        self._splits = {'train': ex[:2], 'test': ex[2:]}\n"
        "    def score(self, example, response):\n"
        "        return Outcome(float(response == example.prompt))\n"
        "class NotATask:\n    pass\n")
    task = build_task(f"{tmp_path}/mytask.py:Echo", word="yo")
    assert isinstance(task, BaseTask) and [e.prompt for e in task.examples("train")] == ["yo 0", "yo 1"]
    assert task.score(task.examples("test")[0], "yo 2").reward == 1.0
    with pytest.raises(ValueError, match="has no option 'wrd'; its options: word"):  # not a TypeError traceback
        build_task(f"{tmp_path}/mytask.py:Echo", wrd="yo")
    with pytest.raises(ValueError, match="is class NotATask, not a subclass of credit.tasks.BaseTask"):
        build_task(f"{tmp_path}/mytask.py:NotATask")
    with pytest.raises(ValueError, match="or your own 'package.module:Class'"):
        build_task("no_such_task")


def test_cli_reports_data_and_reward_mistakes_in_one_line(tiny_model_dir, tmp_path, capsys):
    from credit.cli import main as cli_main

    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"gold": "1"}])
    (tmp_path / "rw.py").write_text("def f(prompts, responses, examples):\n    return [1.0] * len(responses)\n")
    for reward, message in [(f"{tmp_path}/rw.py:f", "d.jsonl:2: field 'q': missing"),
                            (f"{tmp_path}/rw.py:g", "rw.py:g': '" + str(tmp_path) + "/rw.py' has no attribute 'g'")]:
        code = cli_main(["train", f"model.name={tiny_model_dir}", f"out_dir={tmp_path / 'run'}", "device=cpu",
                         "task.name=prompts", f"task.options={{path: '{path}', prompt_field: q, reward: '{reward}'}}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("credit train: error: ") and message in err and "\n" not in err


# ----------------------------------------------------------------------------- chat templates

# Qwen3's template closes an empty think block after the assistant header when enable_thinking is false.
QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
NO_THINK = {"enable_thinking": False}


@pytest.fixture(scope="module")
def qwen3_like_tok(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # a private copy: the session tokenizer stays as it is
    tok.chat_template = QWEN3_LIKE
    return tok


def test_chat_template_kwargs_reach_student_and_teacher_prompts(qwen3_like_tok):
    from credit.rollout import encode_prompts
    from credit.tasks.base import Outcome
    from credit.teacher.contexts import build_teacher_contexts

    tok = qwen3_like_tok
    chats = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "And 4 + 4?"}]]
    plain = [tok.decode(ids) for ids in encode_prompts(tok, chats)]
    off = [tok.decode(ids) for ids in encode_prompts(tok, chats, chat_template_kwargs=NO_THINK)]
    assert all("<think>" not in t for t in plain)
    assert all(t == p + "<think>\n\n</think>\n\n" for t, p in zip(off, plain))

    examples = [Example(id=str(i), messages=c) for i, c in enumerate(chats)]
    outcomes = [Outcome(0.0, "Check the sum."), Outcome(1.0), Outcome(0.0, "Check the sum."), Outcome(1.0)]
    for kwargs, expect in ((None, False), (NO_THINK, True)):
        tc = build_teacher_contexts(tok, examples, [0, 0, 1, 1], ["4", "5", "7", "8"], outcomes,
                                    chat_template_kwargs=kwargs)
        texts = [tok.decode(ids) for ids in tc.context_ids]
        assert all(t.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") == expect for t in texts)
        assert "Check the sum." in texts[0]


def test_chat_template_kwargs_reach_evaluation(qwen3_like_tok, tiny_model_and_tokenizer, qa, monkeypatch):
    import credit.rollout as rollout
    from credit import evaluate as ev

    real_sample, seen = rollout.sample, []

    def spy(model, tokenizer, prompt_ids, cfg, **kw):
        seen.extend(tokenizer.decode(ids) for ids in prompt_ids)
        return real_sample(model, tokenizer, prompt_ids, cfg, **kw)

    monkeypatch.setattr(rollout, "sample", spy)
    task = PromptTask(qa, prompt_field="q", answer_field="gold", n_test=2)
    model = tiny_model_and_tokenizer[0]
    result = ev.evaluate(model, qwen3_like_tok, task, n=1, max_new_tokens=2, chat_template_kwargs=NO_THINK)
    assert result["num_items"] == 2 and len(seen) == 2
    assert all(t.endswith("<think>\n\n</think>\n\n") for t in seen)


# ----------------------------------------------------------------------------- the README's example


def readme_files() -> dict[str, str]:
    """The files of README's "Your own task and reward" section: a **`name`** line, then a fenced block."""
    text = README.read_text()
    section = text.split("## Your own task and reward", 1)[1].split("\n## ", 1)[0]
    return {name: body for name, body in re.findall(r"\*\*`([\w.-]+)`\*\*\n```\w*\n(.*?)```", section, flags=re.DOTALL)}


RECORDER = """\
import json
from pathlib import Path

def record(prompts, responses, examples):
    with Path(__file__).with_name("calls.jsonl").open("a") as f:
        f.write(json.dumps({"prompts": prompts, "responses": responses, "examples": examples}) + "\\n")
    return [0.0] * len(responses)
"""


def test_readme_example_trains_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    from credit.cli import main as cli_main

    files = readme_files()
    assert set(files) == {"capitals.jsonl", "my_reward.py", "capitals.yaml"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "recorder.py").write_text(RECORDER)
    monkeypatch.chdir(tmp_path)  # the README runs from the folder holding the three files

    cfg = yaml.safe_load(files["capitals.yaml"])
    # a second reward with weight 0 records every call without changing the reward
    cfg["task"]["options"].update(reward=[cfg["task"]["options"]["reward"], "recorder.py:record"], reward_weights=[1.0, 0.0])
    cfg.update(steps=2, out_dir=str(tmp_path / "run"), device="cpu")
    cfg["model"] = {"name": tiny_model_dir}
    cfg["rollout"].update(max_new_tokens=6)
    cfg.update(log={"progress": False, "tensorboard": False, "rollouts_per_step": 16},
               eval={"samples": 1, "max_new_tokens": 4})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "tiny.yaml"]) == 0

    rows = [json.loads(line) for line in files["capitals.jsonl"].splitlines()]
    task = build_task("prompts", **cfg["task"]["options"])
    train_q = {e.prompt for e in task.examples("train")}
    test_q = {e.prompt for e in task.examples("test")}
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    B, G = cfg["rollout"]["prompts_per_step"], cfg["rollout"]["samples_per_prompt"]
    # eval before, two training steps, eval after
    assert [len(c["responses"]) for c in calls] == [len(test_q), B * G, B * G, len(test_q)]
    assert set(calls[0]["prompts"]) == set(calls[3]["prompts"]) == test_q
    for c in calls[1:3]:
        assert set(c["prompts"]) <= train_q
        assert all(c["prompts"][i] == c["prompts"][i // G * G] for i in range(B * G))  # G rollouts per prompt
        assert c["examples"] == [next(r for r in rows if r["question"] == p) for p in c["prompts"]]

    # task/reward_mean of each step is the README reward on exactly the recorded responses
    sys.path.insert(0, str(tmp_path))
    try:
        from my_reward import reward
    finally:
        sys.path.remove(str(tmp_path))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step_rewards = [m["task/reward_mean"] for m in metrics if "task/reward_mean" in m]
    for c, logged in zip(calls[1:3], step_rewards, strict=True):
        mine = [r if isinstance(r, float) else r[0] for r in reward(c["prompts"], c["responses"], c["examples"])]
        assert logged == sum(mine) / len(mine)  # rewards are 0 or 1: a mean over 16 is exact in float32

    # the reward's feedback reached the teacher context of every rollout it was given for
    records = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    wrong = [r for r in records if r["reward"] == 0.0]
    assert wrong, "a random tiny model should answer some capital wrong"
    for r in wrong:
        row = next(x for x in rows if x["question"] == r["prompt_messages"][-1]["content"])
        assert r["feedback"] == f"Incorrect: the capital of {row['country']} is {row['answer']}."
        assert r["feedback"] in r["teacher_context"]


# A template that refuses to render without the variable: any prompt built without the config's
# chat_template_kwargs (student, teacher, negatives, evaluation) stops the run.
STRICT_QWEN3_LIKE = ("{% if enable_thinking is not defined %}{{ raise_exception('chat_template_kwargs not passed') }}"
                     "{% endif %}" + QWEN3_LIKE)


def test_config_chat_template_kwargs_reach_every_prompt_of_a_run(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from credit.cli import main as cli_main

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = STRICT_QWEN3_LIKE
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    assert cli_main(["train", f"model.name={model_dir}", "model.chat_template_kwargs={enable_thinking: false}",
                     f"out_dir={out}", "device=cpu", "steps=1", "method=credit", "rollout.prompts_per_step=2",
                     "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "eval.limit=2", "eval.samples=1",
                     "task.options={answer_feedback: true}", "log.progress=false", "log.tensorboard=false"]) == 0
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert records and all(r["teacher_context"].endswith("<think>\n\n</think>\n\n") for r in records)
    assert all(tok.decode(n).endswith("<think>\n\n</think>\n\n") for r in records for n in r["negative_context_ids"])
