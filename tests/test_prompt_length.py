"""A prompt longer than the model's positions is refused before the first step, in one line that
names the example, its length and the limit (issue 27, item 4)."""

import json

import pytest

from credit.cli import main
from credit.rollout import check_prompt_lengths, encode_prompts


@pytest.fixture(scope="module")
def short_model_dir(tiny_tokenizer, tmp_path_factory):
    """The tiny model with room for 64 positions only."""
    from credit.models import tiny_model

    path = tmp_path_factory.mktemp("short-model")
    tiny_model(tiny_tokenizer, seed=0, max_position_embeddings=64).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def write_data(path, long_id="long-one"):
    rows = [{"id": f"q{i}", "question": f"What is {i} + 2?", "answer": str(i + 2)} for i in range(6)]
    rows.append({"id": long_id, "question": "Please add these numbers carefully: " + " + ".join(["7"] * 30),
                 "answer": "210"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def train_args(model_dir, tmp_path, *extra):
    return ["train", f"model.name={model_dir}", f"out_dir={tmp_path / 'run'}", "device=cpu", "steps=1",
            "task.name=prompts", f"task.options={{path: {tmp_path / 'data.jsonl'}, prompt_field: question, "
            "answer_field: answer, id_field: id, n_test: 2}", "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6", "log.progress=false",
            "log.tensorboard=false", "eval.before=false", "eval.samples=1", *extra]


def test_a_prompt_past_the_position_limit_is_one_line_naming_it(short_model_dir, tiny_tokenizer, tmp_path, capsys):
    write_data(tmp_path / "data.jsonl")
    long = [{"role": "user", "content": "Please add these numbers carefully: " + " + ".join(["7"] * 30)}]
    n = len(encode_prompts(tiny_tokenizer, [long])[0])
    assert n + 6 > 64 > 38 + 6  # the long prompt does not fit, the others do
    assert main(train_args(short_model_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("credit train:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    err = lines[0]
    assert "example 'long-one'" in err and f"prompt is {n} tokens" in err and "the model has 64" in err
    assert "rollout.max_new_tokens=6" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the run began


def test_the_check_counts_chat_template_kwargs_and_skips_models_without_a_limit(tiny_tokenizer):
    from types import SimpleNamespace

    from credit.tasks.base import Example

    class Task:
        def examples(self, split):
            return [Example(f"{split}0", [{"role": "user", "content": "What is 1 + 1?"}])]

    n = len(encode_prompts(tiny_tokenizer, [[{"role": "user", "content": "What is 1 + 1?"}]])[0])
    fits = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=n + 4))
    check_prompt_lengths(tiny_tokenizer, fits, Task(), 4)  # exactly the limit: fine
    with pytest.raises(ValueError, match=rf"train example 'train0': its prompt is {n} tokens.*{n + 5} positions"):
        check_prompt_lengths(tiny_tokenizer, fits, Task(), 5)
    check_prompt_lengths(tiny_tokenizer, SimpleNamespace(config=SimpleNamespace()), Task(), 10**6)  # no limit
