"""credit explain: the per-token numbers are the signal functions' outputs; the pictures hold them."""

from __future__ import annotations

import argparse
import html
import json

import pytest
import torch

from credit.analysis import explain as ex
from credit.signal import delta_v, generic_part, naive_token_logprobs, specific_part
from credit.teacher.contexts import Privileged, render_context

PROMPT = "What is 3 + 4? Answer with just the number."
NEGATIVES = ["What is 5 + 9? Answer with just the number.", "What is 1 + 1? Answer with just the number."]
RESPONSE = 'The answer is 7.\n\n<b>"x" & y</b>\té😀'


@pytest.fixture(scope="module")
def expl(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    return ex.explain(model, tok, PROMPT, RESPONSE, feedback="The correct answer is 7.",
                      negatives=NEGATIVES, temperature=0.7)


def _lone_logprobs(model, ctx, ids, temperature):
    """log π(y_t | ctx, y_<t) from one unpadded forward pass (not the packed scoring path)."""
    x = torch.tensor([ctx + ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(ctx) - 1 : -1]  # (T, V)
    return naive_token_logprobs(logits, torch.tensor(ids), temperature)  # (T,)


def test_numbers_equal_signal_functions(expl, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    assert expl.ids == ids
    z = Privileged(feedback="The correct answer is 7.")
    user = [{"role": "user", "content": PROMPT}]
    ls = _lone_logprobs(model, render_context(tok, user, None), ids, 0.7)
    lt = _lone_logprobs(model, render_context(tok, user, z), ids, 0.7)
    ln = torch.stack([_lone_logprobs(model, render_context(tok, [{"role": "user", "content": p}], z), ids, 0.7)
                      for p in NEGATIVES])  # (K, T)
    dv = delta_v(lt[None], ls[None])[0]
    g = generic_part(ln[None])[0]
    s = specific_part(lt[None], g[None])[0]
    for name, ref in (("dv", dv), ("g", g), ("s", s), ("student_logp", ls), ("teacher_logp", lt)):
        assert torch.allclose(torch.tensor(getattr(expl, name)), ref, atol=2e-4), name
    # the JSON dump holds the same numbers, and the sums are the sums of the token values
    data = json.loads(json.dumps(expl.to_json()))
    assert data["dv"] == expl.dv and data["s"] == expl.s and data["g"] == expl.g and data["ids"] == ids
    assert data["sums"]["dv"] == pytest.approx(sum(expl.dv), abs=1e-4)
    assert data["sums"]["s"] == pytest.approx(sum(expl.s), abs=1e-4)
    # identities: S − ΔV = ℓS − G per token
    for t in range(len(ids)):
        assert expl.s[t] - expl.dv[t] == pytest.approx(expl.student_logp[t] - expl.g[t], abs=1e-4)


def test_token_pieces_concatenate_to_the_text(expl, tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    assert "".join(expl.tokens) == tok.decode(expl.ids) == RESPONSE
    assert "" in expl.tokens  # the emoji spans several byte tokens: only the last carries it


def test_html_holds_every_token_escaped(expl):
    page = ex.render_html(expl)
    assert page.count('class="tok"') == 3 * len(expl.ids)  # ΔV, S and G panels
    for piece in expl.tokens:
        if piece.strip():
            assert html.escape(piece.replace("\t", "⇥")) in page
    panels = page.split("<h2>ΔV")[1]
    assert "<b>" not in panels and "</b>" not in panels  # the response's markup is escaped
    assert "&lt;" in panels and "&amp;" in panels and "↵" in panels and "⇥" in panels
    assert f"ΔV = {expl.dv[0]:+.4f}" in page  # numbers on hover
    assert "<script" not in page and "http" not in page  # self-contained


def test_png_heat_strip_rows(expl, tmp_path):
    fig = ex.render_png(expl)
    ax = fig.axes[0]
    labels = [t.get_text().split(" ")[0] for t in ax.get_yticklabels()]
    assert labels == ["ΔV", "S", "G"]
    img = ax.images[0].get_array()
    assert img.shape == (3, len(expl.ids))
    ex.viz.close(fig)
    paths = ex.write_outputs(expl, tmp_path / "e")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["tokens"] == expl.tokens
    assert "data:image/png;base64," in paths["html"].read_text()


def test_given_negative_contexts_replace_the_rendered_ones(expl, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    z = Privileged(feedback="The correct answer is 7.")
    user = [{"role": "user", "content": PROMPT}]

    def run(contexts):
        return ex.explain(model, tok, PROMPT, RESPONSE, feedback=z.feedback, negatives=NEGATIVES, temperature=0.7,
                          negative_context_ids=contexts)

    # swap="input" contexts given by hand: the same numbers as rendering them
    same = run([render_context(tok, [{"role": "user", "content": p}], z) for p in NEGATIVES])
    assert torch.allclose(torch.tensor(same.s), torch.tensor(expl.s), atol=1e-5)
    # the teacher's own context as every negative: nothing is input-specific, S = 0 and G = ℓT
    own = run([render_context(tok, user, z)] * len(NEGATIVES))
    assert torch.allclose(torch.tensor(own.s), torch.zeros(len(own.ids)), atol=1e-4)
    assert own.meta["negative_contexts_given"] and not expl.meta["negative_contexts_given"]
    # another problem's whole context (its own feedback): S differs from swap="input"
    other = run([render_context(tok, [{"role": "user", "content": p}], Privileged(feedback="The correct answer is 2."))
                 for p in NEGATIVES])
    assert not torch.allclose(torch.tensor(other.s), torch.tensor(expl.s), atol=1e-3)
    with pytest.raises(ex.UserError, match="one per prompt"):
        run([render_context(tok, user, z)])


def test_no_privileged_or_empty_response_is_an_error(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ex.UserError, match="privileged"):
        ex.explain(model, tok, PROMPT, "7", negatives=NEGATIVES)
    with pytest.raises(ex.UserError, match="empty"):
        ex.explain(model, tok, PROMPT, "", feedback="f", negatives=NEGATIVES)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved_model(tiny_model_dir):
    return tiny_model_dir


def write_rollouts(path, tok, responses, negatives=True):
    from credit.rollout import encode_prompts

    with open(path, "w") as f:
        for i, text in enumerate(responses):
            msgs = [{"role": "user", "content": f"What is {i} + 2?"}]
            rec = {"step": 0, "prompt_messages": msgs, "response": text,
                   "response_ids": tok(text, add_special_tokens=False)["input_ids"], "reward": 0.0,
                   "feedback": f"The correct answer is {i + 2}.", "demo": None,
                   "teacher_context_ids": render_context(tok, msgs, Privileged(feedback=f"The correct answer is {i + 2}.")),
                   "negative_prompts": [[{"role": "user", "content": "What is 9 + 9?"}]] if negatives else []}
            assert encode_prompts(tok, [msgs])[0]
            f.write(json.dumps(rec) + "\n")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="credit")
    sub = parser.add_subparsers()
    ex.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_explain_rollout(saved_model, tiny_model_and_tokenizer, tmp_path, capsys):
    _, tok = tiny_model_and_tokenizer
    write_rollouts(tmp_path / "rollouts.jsonl", tok, ["5", "The answer is 3."])
    rc = _cli(["explain", "--model", saved_model, "--rollout", str(tmp_path / "rollouts.jsonl"), "--index", "1",
               "--out", str(tmp_path / "out" / "e")])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "e.json").read_text())
    assert data["ids"] == tok("The answer is 3.", add_special_tokens=False)["input_ids"]
    assert data["meta"]["teacher_context_recorded"] and len(data["negative_prompts"]) == 1


@pytest.mark.parametrize("problem, message", [
    ("mismatch", "tokenizer does not match"),
    ("empty", "empty"),
    ("malformed", "rollouts.jsonl:2: not valid JSON"),
    ("index", "out of range"),
])
def test_cli_explain_bad_input(problem, message, saved_model, tiny_model_and_tokenizer, tmp_path, capsys):
    _, tok = tiny_model_and_tokenizer
    path = tmp_path / "rollouts.jsonl"
    write_rollouts(path, tok, ["7", "8"])
    rows = path.read_text().splitlines()
    first = json.loads(rows[0])
    index = "0"
    if problem == "mismatch":
        first["response_ids"] = [i + 7 for i in first["response_ids"]]  # another tokenizer's ids
    elif problem == "empty":
        first["response"], first["response_ids"] = "", []
    elif problem == "malformed":
        rows[1] = rows[1][:-3]
    else:
        index = "5"
    path.write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    rc = _cli(["explain", "--model", saved_model, "--rollout", str(path), "--index", index,
               "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
