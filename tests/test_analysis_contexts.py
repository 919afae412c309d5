"""explain, pmi and eval score exactly the contexts training scored (issue 27, item 3): student,
teacher and negative contexts come from the loop's builders with the run's chat_template_kwargs,
here a Qwen3-style template whose generation prompt depends on ``enable_thinking``."""

import copy
import json

import pytest
import yaml

import credit.rollout as ro
from credit.analysis import pmi
from credit.cli import main
from credit.rollout import encode_prompts
from credit.tasks import build_task
from credit.tasks.base import Example, Outcome
from credit.teacher.contexts import build_teacher_contexts
from credit.teacher.negatives import build_negative_contexts

#: Qwen3's rule, reduced: with enable_thinking false the assistant turn opens with an empty think block.
QWEN3_STYLE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}")
NO_THINKING = {"enable_thinking": False}
PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]
NEGATIVE = [{"role": "user", "content": "What is 9 + 9?"}]
FEEDBACK = "The correct answer is 7."
RESPONSE = "The answer is 8."


@pytest.fixture(scope="module")
def qwen_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = QWEN3_STYLE
    return tok


@pytest.fixture(scope="module")
def run_dir(tiny_model_and_tokenizer, qwen_tok, tmp_path_factory):
    """A run trained with enable_thinking false: config.yaml and final/ (the model with that template)."""
    from credit.config import dump, load_config

    run = tmp_path_factory.mktemp("qwen-run")
    model, _ = tiny_model_and_tokenizer
    model.save_pretrained(run / "final")
    qwen_tok.save_pretrained(run / "final")
    cfg = load_config(None, ["model.chat_template_kwargs={enable_thinking: false}", f"out_dir={run}",
                             "credit.num_negatives=1", "rollout.max_new_tokens=4", "eval.samples=1", "eval.limit=2"])
    (run / "config.yaml").write_text(dump(cfg))
    return run


@pytest.fixture(scope="module")
def loop(qwen_tok):
    """What the training loop builds for this response (train.py's calls, the run's kwargs)."""
    examples = [Example("x", PROMPT), Example("neg", NEGATIVE)]
    student = encode_prompts(qwen_tok, [PROMPT], chat_template_kwargs=NO_THINKING)[0]
    contexts = build_teacher_contexts(qwen_tok, examples, [0], [RESPONSE], [Outcome(0.0, FEEDBACK)],
                                      chat_template_kwargs=NO_THINKING)
    negatives = build_negative_contexts(qwen_tok, examples, [0], contexts, [[1]], chat_template_kwargs=NO_THINKING)
    out = {"student": student, "teacher": contexts.context_ids[0], "negatives": negatives.context_ids[0]}
    for ids in (out["student"], out["teacher"], *out["negatives"]):  # the kwarg reached the template
        assert qwen_tok.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert out["student"] != encode_prompts(qwen_tok, [PROMPT])[0]
    return out


def write_negatives(path):
    path.write_text(json.dumps({"messages": NEGATIVE}) + "\n")
    return str(path)


@pytest.mark.parametrize("how", ["run", "flag"])
def test_explain_scores_the_loops_contexts(how, run_dir, loop, tmp_path, capsys):
    model = ["--model", str(run_dir)]
    if how == "flag":  # final/ alone, outside its run: only the flag can say how the run was trained
        import shutil

        shutil.copytree(run_dir / "final", tmp_path / "model")
        model = ["--model", str(tmp_path / "model"), "--chat-template-kwargs", "{enable_thinking: false}"]
    rc = main(["explain", *model, "--prompt", PROMPT[0]["content"], "--response", RESPONSE, "--feedback", FEEDBACK,
               "--negatives-file", write_negatives(tmp_path / "neg.jsonl"), "-k", "1", "--out", str(tmp_path / "e")])
    assert rc == 0, capsys.readouterr().err
    scored = json.loads((tmp_path / "e.json").read_text())["meta"]["context_ids"]
    assert scored == loop


def test_explain_of_a_record_without_its_contexts_rebuilds_the_loops(run_dir, loop, qwen_tok, tmp_path, capsys):
    rec = {"prompt_messages": PROMPT, "response": RESPONSE, "feedback": FEEDBACK, "demo": None,
           "response_ids": qwen_tok(RESPONSE, add_special_tokens=False)["input_ids"], "negative_prompts": [NEGATIVE]}
    (tmp_path / "rollouts.jsonl").write_text(json.dumps(rec) + "\n")
    rc = main(["explain", "--model", str(run_dir), "--rollout", str(tmp_path / "rollouts.jsonl"),
               "--out", str(tmp_path / "e")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "e.json").read_text())["meta"]["context_ids"] == loop


@pytest.fixture
def telescoping_spy(monkeypatch):
    seen = {}
    real = pmi.telescoping

    def spy(model, tokenizer, student, teacher, responses, *a, **k):
        seen.update(student=student, teacher=teacher)
        return real(model, tokenizer, student, teacher, responses, *a, **k)

    monkeypatch.setattr(pmi, "telescoping", spy)
    return seen


def test_pmi_on_records_scores_the_loops_contexts(run_dir, loop, qwen_tok, telescoping_spy, tmp_path, capsys):
    rec = {"prompt_messages": PROMPT, "response": RESPONSE, "feedback": FEEDBACK, "demo": None,
           "response_ids": qwen_tok(RESPONSE, add_special_tokens=False)["input_ids"]}
    (tmp_path / "rollouts.jsonl").write_text(json.dumps(rec) + "\n")
    assert main(["pmi", "--model", str(run_dir), "--rollouts", str(tmp_path / "rollouts.jsonl")]) == 0, \
        capsys.readouterr().err
    assert telescoping_spy == {"student": [loop["student"]], "teacher": [loop["teacher"]]}


def test_pmi_on_a_task_scores_the_loops_contexts(run_dir, qwen_tok, telescoping_spy, tmp_path, capsys):
    args = ["pmi", "--model", str(run_dir), "-n", "3", "-m", "2", "--max-new-tokens", "3",
            "--task-option", "answer_feedback=true", "--json", str(tmp_path / "p.json")]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "p.json").read_text())
    examples = {e.id: e for e in build_task("addition", answer_feedback=True).examples("train")}
    checked = [i for i in result["items"] if "sum_dv" in i]
    assert checked and result["config"]["chat_template_kwargs"] == NO_THINKING
    for item, student, teacher in zip(checked, telescoping_spy["student"], telescoping_spy["teacher"]):
        ex = examples[item["example"]]
        assert student == encode_prompts(qwen_tok, [ex.messages], chat_template_kwargs=NO_THINKING)[0]
        ref = build_teacher_contexts(qwen_tok, [ex], [0], [item["response"]], [Outcome(0.0, item["feedback"])],
                                     chat_template_kwargs=NO_THINKING)
        assert teacher == ref.context_ids[0]


def test_eval_samples_from_the_loops_prompts(run_dir, qwen_tok, monkeypatch, capsys):
    seen, real = [], ro.sample
    monkeypatch.setattr(ro, "sample", lambda model, tok, prompts, *a, **k: seen.extend(prompts) or
                        real(model, tok, prompts, *a, **k))
    assert main(["eval", "--model", str(run_dir)]) == 0, capsys.readouterr().err
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    examples = build_task(cfg["task"]["name"]).examples("test")[:2]
    assert seen == encode_prompts(qwen_tok, [e.messages for e in examples], chat_template_kwargs=NO_THINKING)
