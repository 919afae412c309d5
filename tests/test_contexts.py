"""Teacher contexts (docs/method.md §1.3) with the real SmolLM2 chat template."""

from __future__ import annotations


import pytest

from credit.tasks.base import Example, Outcome
from credit.teacher.contexts import (
    Privileged,
    Templates,
    build_teacher_contexts,
    render_context,
    reprompt_text,
)

CLOSING = "Correctly solve the original question."
ASSISTANT_HEADER = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    """The real SmolLM2 tokenizer (ChatML template, eos = pad = <|im_end|>), from conftest."""
    return tiny_tokenizer


def ex(i: int, question: str, system: str | None = None) -> Example:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return Example(id=f"q{i}", messages=msgs)


def dec(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def build(tok, rewards, responses=None, feedback=None, examples=None, G=None, **kw):
    n = len(rewards)
    G = G or n
    examples = examples or [ex(b, f"Question number {b}?") for b in range(n // G)]
    groups = [i // G for i in range(n)]
    responses = responses or [f"ANSWER_{i}" for i in range(n)]
    feedback = feedback or [""] * n
    outcomes = [Outcome(r, f) for r, f in zip(rewards, feedback)]
    return build_teacher_contexts(tok, examples, groups, responses, outcomes, **kw), examples


def test_demo_is_first_successful_peer_never_self(tok):
    tc, _ = build(tok, [0.0, 1.0, 1.0, 0.0])
    assert tc.demo_source == [1, 2, 1, 1]  # sample 1 takes the next success, not itself
    texts = [dec(tok, c) for c in tc.context_ids]
    assert "ANSWER_1" in texts[0] and "ANSWER_2" not in texts[0]
    assert "ANSWER_2" in texts[1] and "ANSWER_1" not in texts[1]
    assert "ANSWER_1" in texts[2] and "Correct solution:" in texts[3]
    assert all(CLOSING in t for t in texts) and all(tc.has_signal)

    tc_self, _ = build(tok, [0.0, 1.0, 1.0, 0.0], dont_reprompt_on_self_success=False)
    assert tc_self.demo_source == [1, 1, 1, 1]


def test_lone_success_gets_no_signal_and_plain_prompt(tok):
    tc, examples = build(tok, [1.0, 0.0, 0.5])
    assert tc.has_signal == [False, True, True] and tc.demo_source == [None, 0, 0]
    assert tc.context_ids[0] == render_context(tok, examples[0].messages, None)
    plain = tok.apply_chat_template(examples[0].messages, tokenize=False, add_generation_prompt=True)
    assert dec(tok, tc.context_ids[0]) == plain
    m = tc.metrics()
    assert m["teacher/no_signal_fraction"] == pytest.approx(1 / 3)
    assert m["teacher/demo_fraction"] == pytest.approx(2 / 3)
    assert m["teacher/success_group_fraction"] == 1.0


def test_no_success_no_feedback_means_no_signal(tok):
    tc, _ = build(tok, [0.0, 0.0, 0.0, 0.0], G=2)
    assert tc.has_signal == [False] * 4
    assert tc.metrics()["teacher/success_group_fraction"] == 0.0


def test_feedback_slot_only_when_non_empty(tok):
    fb = ["", "FB_one failed test", "   ", "FB_three"]
    tc, _ = build(tok, [0.0] * 4, feedback=fb)
    texts = [dec(tok, c) for c in tc.context_ids]
    assert tc.used_feedback == [False, True, False, True]
    assert tc.has_signal == [False, True, False, True]
    assert "unsuccessful earlier attempt" in texts[1] and "FB_one failed test" in texts[1]
    assert "unsuccessful earlier attempt" not in texts[0] and "unsuccessful" not in texts[2]
    assert "Correct solution:" not in texts[1]
    assert tc.privileged[1] == Privileged(demo=None, feedback="FB_one failed test")
    assert tc.metrics()["teacher/feedback_fraction"] == 0.5

    off, _ = build(tok, [0.0] * 4, feedback=fb, include_feedback=False)
    assert off.used_feedback == [False] * 4 and off.has_signal == [False] * 4


def test_feedback_only_without_demo(tok):
    fb = ["FB_a", "FB_b", "FB_c"]
    both, _ = build(tok, [0.0, 1.0, 0.0], feedback=fb)
    t0 = dec(tok, both.context_ids[0])
    assert both.used_feedback == [True, True, True]
    # order of the sections: prompt, solution, feedback, closing instruction
    assert t0.index("Question number 0?") < t0.index("Correct solution:") < t0.index("FB_a") < t0.index(CLOSING)

    only, _ = build(tok, [0.0, 1.0, 0.0], feedback=fb, feedback_only_without_demo=True)
    # samples 0 and 2 have a demo (sample 1), sample 1 is a lone success: feedback only there
    assert only.demo_source == [1, None, 1] and only.used_feedback == [False, True, False]
    assert "FB_a" not in dec(tok, only.context_ids[0]) and "FB_b" in dec(tok, only.context_ids[1])


def test_exact_text_of_the_user_turn(tok):
    z = Privileged(demo="D", feedback="F")
    assert reprompt_text("P", z) == (
        "P\nCorrect solution:\n\nD\n\n"
        "\nThe following is feedback from your unsuccessful earlier attempt:\n\nF\n\n"
        "\n\nCorrectly solve the original question.\n"
    )
    assert reprompt_text("P", Privileged(demo="D")) == "P\nCorrect solution:\n\nD\n\n\n\n" + CLOSING + "\n"


def test_curly_braces_survive_verbatim(tok):
    q = "Compute {x} where f = {prompt} and {solution}{} {{y}}"
    demo = "def f(d): return {'k': d} {demo} {feedback}"
    fb = "KeyError: '{feedback}' at {0}"
    tc, _ = build(tok, [0.0, 1.0], responses=["nope", demo], feedback=[fb, ""], examples=[ex(0, q)])
    t = dec(tok, tc.context_ids[0])
    assert q in t and demo in t and fb in t
    assert t.count(CLOSING) == 1


def test_system_and_earlier_messages_kept(tok):
    msgs = [
        {"role": "system", "content": "SYSTEM_RULES"},
        {"role": "user", "content": "earlier turn"},
        {"role": "assistant", "content": "earlier reply"},
        {"role": "user", "content": "Final question?"},
    ]
    e = Example(id="s", messages=msgs)
    tc, _ = build(tok, [0.0, 1.0], examples=[e])
    t = dec(tok, tc.context_ids[0])
    expected = tok.apply_chat_template(
        msgs[:-1] + [{"role": "user", "content": reprompt_text("Final question?", Privileged(demo="ANSWER_1"))}],
        tokenize=False, add_generation_prompt=True,
    )
    assert t == expected
    assert "SYSTEM_RULES" in t and "earlier reply" in t and "helpful AI assistant named SmolLM" not in t
    assert t.endswith(ASSISTANT_HEADER)


def test_think_is_stripped_from_the_demo(tok):
    demo = "<think>SECRET reasoning\nmore</think>\n\nFINAL_ANSWER"
    tc, _ = build(tok, [0.0, 1.0], responses=["x", demo])
    t = dec(tok, tc.context_ids[0])
    assert "FINAL_ANSWER" in t and "SECRET" not in t and "<think>" not in t
    assert tc.privileged[0].demo == "FINAL_ANSWER"
    keep, _ = build(tok, [0.0, 1.0], responses=["x", demo], strip_thinking=False)
    assert "SECRET reasoning" in dec(tok, keep.context_ids[0])


def test_truncation_cuts_demo_and_feedback_from_their_ends(tok):
    demo = " ".join(f"demo{i}" for i in range(300))
    fb = " ".join(f"fb{i}" for i in range(200))
    q = "THE_PROBLEM_STATEMENT: sum the numbers."
    kw = dict(responses=["x", demo], feedback=[fb, ""], examples=[ex(0, q, system="SYS")])
    full, _ = build(tok, [0.0, 1.0], **kw)
    n_full = len(full.context_ids[0])
    limit = n_full - 400
    tc, examples = build(tok, [0.0, 1.0], max_context_tokens=limit, **kw)
    ids, z = tc.context_ids[0], tc.privileged[0]
    t = dec(tok, ids)
    assert tc.truncated == [True, False]  # sample 1 is a lone success: plain prompt, never cut
    assert limit - 4 <= len(ids) <= limit  # token-accurate: as much z as fits
    assert q in t and "SYS" in t and t.endswith(CLOSING + "\n<|im_end|>\n" + ASSISTANT_HEADER)
    # kept prefixes of both, the longer one (demo) cut more
    assert demo.startswith(z.demo) and fb.startswith(z.feedback)
    assert 0 < len(z.demo) < len(demo) and 0 < len(z.feedback) < len(fb)
    assert "demo0 demo1" in t and "demo299" not in t and "fb199" not in t
    # the context is exactly render_context of the same (messages, z): negatives can reuse z
    assert ids == render_context(tok, examples[0].messages, z)
    assert tc.metrics()["teacher/truncated_fraction"] == 0.5

    # only the demo is long: it alone is cut, the short feedback stays whole
    tc2, _ = build(tok, [0.0, 1.0], max_context_tokens=n_full - 300,
                   responses=["x", demo], feedback=["short fb", ""], examples=[ex(0, q)])
    assert tc2.privileged[0].feedback == "short fb" and len(tc2.context_ids[0]) <= n_full - 300


def test_truncation_errors_when_prompt_alone_does_not_fit(tok):
    with pytest.raises(ValueError, match="max_context_tokens=20"):
        build(tok, [0.0, 1.0], max_context_tokens=20)


def test_fits_untouched(tok):
    full, _ = build(tok, [0.0, 1.0], feedback=["F", ""])
    tc, _ = build(tok, [0.0, 1.0], feedback=["F", ""], max_context_tokens=len(full.context_ids[0]))
    assert tc.truncated == [False, False] and tc.context_ids == full.context_ids


def test_input_validation():
    with pytest.raises(ValueError, match="exactly once"):
        Templates(reprompt="no prompt slot")
    with pytest.raises(ValueError, match="one entry per sample"):
        build_teacher_contexts(None, [ex(0, "q")], [0, 0], ["a"], [Outcome(0.0)] * 2)
    with pytest.raises(ValueError, match="outside range"):
        build_teacher_contexts(None, [ex(0, "q")], [1], ["a"], [Outcome(0.0)])
    with pytest.raises(ValueError, match="role 'user'"):
        render_context(None, [{"role": "assistant", "content": "x"}], None)
