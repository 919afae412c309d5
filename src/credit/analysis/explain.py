"""See the credit: per-token ΔV_t, S_t and G_t of one response, as HTML, PNG and JSON.

For a prompt ``x`` (chat messages), a response ``y`` and privileged information ``z`` (feedback
and/or a demo), with the teacher = the same model under the teacher context (a *live* teacher):

    ℓS_t = log π(y_t | x, y_<t)            student
    ℓT_t = log π(y_t | c, y_<t)            teacher, c = template(x, z)
    ℓN^k_t = log π(y_t | c^(k), y_<t)      k-th negative: same y and z, another prompt x_k
    ΔV_t = ℓT_t − ℓS_t,  G_t = agg_k ℓN^k_t,  S_t = ℓT_t − G_t

computed with ``credit.scoring`` (one packed forward) and the pure functions of ``credit.signal``,
so the numbers are exactly those the trainer would see for a live teacher at that temperature. The
contexts are made by the loop's own builders (``credit.analysis.runfiles.loop_contexts``) with the run's
``chat_template_kwargs`` (from its config.yaml when ``--model`` is a run, or the flag).

The response is scored as token ids: from a run's ``rollouts.jsonl`` record the original
``response_ids`` (and the recorded ``teacher_context_ids`` and ``negative_context_ids``) are used,
never a re-tokenization.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from credit.analysis import viz
from credit.errors import UserError
from credit.analysis.runfiles import (add_chat_template_arg, add_common_model_args, apply_run_config, check_ids_fit,
                             check_messages, check_rollout_tokenizer, load_model_from_args, loop_contexts,
                             read_jsonl, read_rollout, run_setting, task_from_args)

Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------- computation


@dataclass
class Explanation:
    """Per-token credit of one response. Lists are indexed by response token ``t``."""

    tokens: list[str]
    """The text each token adds to the decoded response ("" for a partial multi-byte character)."""
    ids: list[int]
    student_logp: list[float]
    teacher_logp: list[float]
    negative_logp: list[list[float]]
    """(K, T): teacher log-probs under each negative context."""
    dv: list[float]
    s: list[float]
    g: list[float]
    sums: dict[str, float]
    """Σ_t of dv, s, g, student_logp, teacher_logp (the sequence pMI is ``sums["dv"]``)."""
    prompt_messages: Messages
    feedback: str | None
    demo: str | None
    negative_prompts: list[Messages]
    temperature: float
    aggregator: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded prefix. A token that ends inside a multi-byte
    character adds "" and the token completing the character carries it, so the pieces concatenate
    to ``decode(ids)`` exactly."""
    pieces, prev = [], ""
    for t in range(len(ids)):
        cur = tokenizer.decode(list(ids[: t + 1]), skip_special_tokens=False)
        if cur.endswith("\ufffd") and t + 1 < len(ids) and cur.startswith(prev):
            pieces.append("")  # incomplete character: wait for the next token
            continue
        if not cur.startswith(prev):  # decoding is not prefix-stable here; fall back to the lone token
            pieces.append(tokenizer.decode([ids[t]], skip_special_tokens=False))
        else:
            pieces.append(cur[len(prev):])
        prev = cur
    return pieces


def _as_messages(prompt: str | Sequence[Mapping[str, str]]) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


@torch.no_grad()
def explain(
    model,
    tokenizer,
    prompt: str | Sequence[Mapping[str, str]],
    response: str | Sequence[int],
    *,
    feedback: str | None = None,
    demo: str | None = None,
    negatives: Sequence[str | Sequence[Mapping[str, str]]],
    temperature: float = 1.0,
    aggregator: str = "mean",
    teacher_context_ids: Sequence[int] | None = None,
    negative_context_ids: Sequence[Sequence[int]] | None = None,
    templates=None,
    micro_batch: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    max_context_tokens: int | None = None,
) -> Explanation:
    """Per-token ΔV, S and G of ``response`` to ``prompt`` given privileged ``feedback``/``demo``.

    Args:
        prompt: a user message, or chat messages (the last one is the user's question).
        response: text (tokenized without special tokens) or the original token ids.
        negatives: K >= 1 other prompts; each negative context keeps ``z`` and swaps in the prompt.
        temperature: log-probs at this temperature (that of sampling), as in training.
        aggregator: ``mean`` or ``logmeanexp`` over negatives (``credit.signal.AGGREGATORS``).
        teacher_context_ids: the recorded teacher context (e.g. truncated in training); default:
            rendered from ``prompt`` and ``z``.
        negative_context_ids: one whole context per prompt in ``negatives`` (``swap="context"``: the
            other problem's own teacher context); default: each rendered from its prompt and this ``z``.
        chat_template_kwargs: the run's ``model.chat_template_kwargs`` (Qwen3: ``{"enable_thinking": False}``).
        max_context_tokens: the run's ``teacher.max_context_tokens`` (demo and feedback cut to fit);
            None: not cut.

    Student, teacher and negative contexts come from the loop's builders (``loop_contexts``); the
    ids scored are kept in ``meta["context_ids"]``.
    """
    from credit.scoring import pack, response_logprobs
    from credit.signal import delta_v, generic_part, sequence_sum, specific_part
    from credit.teacher.contexts import Privileged

    messages = _as_messages(prompt)
    neg_messages = [_as_messages(p) for p in negatives]
    z = Privileged(demo=demo, feedback=feedback if feedback and feedback.strip() else None)
    if z.empty:
        raise UserError("no privileged information: give feedback and/or a demo, else the teacher context "
                        "is the student's prompt and every ΔV is 0")
    if not neg_messages:
        raise UserError("no negative prompts: S and G need at least one other prompt (K >= 1)")
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if isinstance(response, str) \
        else [int(i) for i in response]
    if not ids:
        raise UserError("the response is empty: there is no token to explain")
    check_ids_fit(model, tokenizer, ids)

    built = loop_contexts(tokenizer, messages, feedback=z.feedback, demo=z.demo,
                          negatives=neg_messages if negative_context_ids is None else (),
                          chat_template_kwargs=chat_template_kwargs, max_context_tokens=max_context_tokens,
                          templates=templates)
    student_ctx = built["student"]
    if teacher_context_ids:
        teacher_ctx = list(teacher_context_ids)
        check_ids_fit(model, tokenizer, teacher_ctx, "teacher_context_ids")
    else:
        teacher_ctx = built["teacher"]
    if negative_context_ids is None:
        neg_ctx = built["negatives"]
    elif len(negative_context_ids) != len(neg_messages):
        raise UserError(f"negative_context_ids: {len(negative_context_ids)} contexts for {len(neg_messages)} "
                        "negative prompts; give one per prompt")
    else:
        neg_ctx = [list(c) for c in negative_context_ids]
        for c in neg_ctx:
            check_ids_fit(model, tokenizer, c, "negative_context_ids")
    contexts = [student_ctx, teacher_ctx, *neg_ctx]

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    packed = pack(contexts, [ids] * len(contexts), pad).to(device)
    was_training = model.training
    model.eval()
    try:
        logp = response_logprobs(model, packed, temperature, micro_batch=micro_batch).float().cpu()  # (2+K, T)
    finally:
        model.train(was_training)
    ls, lt, ln = logp[0:1], logp[1:2], logp[2:]  # (1, T), (1, T), (K, T)
    dv = delta_v(lt, ls)  # (1, T)
    g = generic_part(ln.unsqueeze(0), aggregator)  # (1, T)
    s = specific_part(lt, g)  # (1, T)
    mask = torch.ones_like(dv)
    sums = {name: float(sequence_sum(v, mask)[0]) for name, v in
            (("dv", dv), ("s", s), ("g", g), ("student_logp", ls), ("teacher_logp", lt))}
    return Explanation(
        tokens=token_pieces(tokenizer, ids), ids=ids,
        student_logp=ls[0].tolist(), teacher_logp=lt[0].tolist(), negative_logp=ln.tolist(),
        dv=dv[0].tolist(), s=s[0].tolist(), g=g[0].tolist(), sums=sums,
        prompt_messages=messages, feedback=z.feedback, demo=z.demo, negative_prompts=neg_messages,
        temperature=float(temperature), aggregator=aggregator,
        meta={"teacher_context_recorded": bool(teacher_context_ids), "num_negatives": len(neg_messages),
              "negative_contexts_given": negative_context_ids is not None,
              "chat_template_kwargs": dict(chat_template_kwargs or {}),
              "context_ids": {"student": student_ctx, "teacher": teacher_ctx, "negatives": neg_ctx}},
    )


# ----------------------------------------------------------------------------- rendering


def _hover(e: Explanation, t: int) -> str:
    return (f"#{t}  id {e.ids[t]}  {e.tokens[t]!r}\n"
            f"ΔV = {e.dv[t]:+.4f}   S = {e.s[t]:+.4f}   G = {e.g[t]:.4f}\n"
            f"log π(y|x) = {e.student_logp[t]:.4f}   log π(y|c) = {e.teacher_logp[t]:.4f}")


def token_panel(e: Explanation, values: Sequence[float]) -> str:
    """The response with each token coloured by ``values`` (diverging scale, limit at |v|'s 98th pct)."""
    vmax = viz.color_scale(values)
    spans = "".join(viz.token_span(e.tokens[t], values[t], vmax, _hover(e, t)) for t in range(len(e.ids)))
    return f'<div class="panel">{spans}</div><div class="legend">colour limit ±{vmax:.3g}</div>'


def _messages_html(messages: Messages) -> str:
    import html

    return "".join(f"<p><b>{html.escape(m.get('role', '?'))}</b></p><pre>{html.escape(m.get('content', ''))}</pre>"
                   for m in messages)


def render_html(e: Explanation, png: bytes | None = None) -> str:
    """A self-contained page: sums, prompt, z, ΔV and S side by side, G, the heat strip, negatives."""
    import html

    summary = viz.html_table(
        ["tokens", "K", "T", "aggregator", "Σ ΔV (pMI)", "Σ S", "Σ G", "log π(y|x)", "log π(y|c)"],
        [[len(e.ids), len(e.negative_prompts), e.temperature, e.aggregator, e.sums["dv"], e.sums["s"],
          e.sums["g"], e.sums["student_logp"], e.sums["teacher_logp"]]], left_columns=0)
    z = ""
    if e.demo is not None:
        z += f"<p><b>demo</b></p><pre>{html.escape(e.demo)}</pre>"
    if e.feedback is not None:
        z += f"<p><b>feedback</b></p><pre>{html.escape(e.feedback)}</pre>"
    negs = "".join(f"<li><pre>{html.escape(m[-1].get('content', ''))}</pre></li>" for m in e.negative_prompts)
    body = (
        f"{summary}\n<p class=legend>Blue: the token gains credit (value &gt; 0), red: it loses credit. "
        "Hover a token for its numbers. ΔV = log π(y|c) − log π(y|x); S = log π(y|c) − G; "
        "G = the teacher's log-prob with the input swapped for other prompts (its input-generic part).</p>\n"
        f"<h2>Prompt</h2>{_messages_html(e.prompt_messages)}\n<h2>Privileged information z</h2>{z}\n"
        f'<div class="cols"><div><h2>ΔV (SDPO token reward)</h2>{token_panel(e, e.dv)}</div>'
        f"<div><h2>S (input-specific)</h2>{token_panel(e, e.s)}</div></div>\n"
        f"<h2>G (input-generic, centred on its mean)</h2>"
        f"{token_panel(e, [v - sum(e.g) / len(e.g) for v in e.g])}\n"
        + (f"<h2>Heat strip</h2>{viz.html_img(png, 'heat strip of ΔV, S, G per token')}\n" if png else "")
        + f"<h2>Negative prompts (K = {len(e.negative_prompts)})</h2><ol>{negs}</ol>"
    )
    return viz.html_page("credit explain", body)


def render_png(e: Explanation):
    """The matplotlib heat strip: rows ΔV, S and G centred on its mean (one column per token), as the
    HTML page shows them: G is a log-prob, negative on every token, and drawn raw it would paint the
    whole row red ("every token loses credit"); centred, it shows which tokens the other prompts
    predict better or worse than average."""
    mean_g = sum(e.g) / len(e.g)
    return viz.heat_strip(
        e.tokens, {"ΔV": e.dv, "S": e.s, "G − mean": [v - mean_g for v in e.g]},
        title=f"Σ ΔV = {e.sums['dv']:.3f}   Σ S = {e.sums['s']:.3f}   Σ G = {e.sums['g']:.3f} (mean G {mean_g:.3f})",
        legend="blue: the token gains credit (> 0), red: it loses credit (< 0); each row on its own scale "
               "(± in its label). ΔV = log π(y|c) − log π(y|x); S = log π(y|c) − G; G = the teacher's log-prob "
               "with the input swapped for other prompts, centred on its mean over the response.")


def write_outputs(e: Explanation, out: str | Path) -> dict[str, Path]:
    """Write ``<out>.html``, ``<out>.png`` and ``<out>.json``; return the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {k: out.with_name(out.name + "." + k) for k in ("html", "png", "json")}
    fig = render_png(e)
    try:
        png = viz.save_figure(fig, paths["png"])
    finally:
        viz.close(fig)
    paths["html"].write_text(render_html(e, png), encoding="utf-8")
    paths["json"].write_text(json.dumps(e.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------- inputs


def read_prompts(path: str | Path) -> list[Messages]:
    """A jsonl of prompts: each line a string, a list of messages, or an object with ``messages``,
    ``prompt_messages`` or ``prompt``."""
    out = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if isinstance(row, dict):
            key = next((k for k in ("messages", "prompt_messages", "prompt") if k in row), None)
            if key is None:
                raise UserError(f"{where}: an object needs a 'messages', 'prompt_messages' or 'prompt' field")
            out.append(check_messages(row[key], f"{where}: field '{key}'"))
        else:
            out.append(check_messages(row, where))
    return out


def pick_negatives(pool: Sequence[Messages], own: Messages, k: int, seed: int) -> list[Messages]:
    """K distinct prompts from ``pool`` other than ``own`` (by last user message), drawn with ``seed``."""
    own_text = own[-1]["content"]
    seen, candidates = set(), []
    for m in pool:
        text = m[-1]["content"]
        if text != own_text and text not in seen:
            seen.add(text)
            candidates.append(m)
    if not candidates:
        raise UserError("no negative prompt differs from the explained prompt; give other prompts (--negatives-file)")
    return random.Random(seed).sample(candidates, min(k, len(candidates)))


# ----------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="per-token ΔV, S, G of one response as HTML, PNG and JSON",
        description="Score one response under the student prompt, the teacher context (prompt + feedback/"
                    "demo) and K negative contexts, with the same model as a live teacher; write "
                    "OUT.html (tokens coloured, numbers on hover), OUT.png (heat strip) and OUT.json.")
    add_common_model_args(p)
    src = p.add_argument_group("what to explain (either --rollout, or --prompt/--messages with --response)")
    src.add_argument("--rollout", help="a run's rollouts.jsonl; explains record --index")
    src.add_argument("--index", type=int, default=0, help="0-based record index in --rollout (default 0)")
    src.add_argument("--prompt", help="the user message")
    src.add_argument("--messages", help="chat messages as a JSON list (or a path to a .json file)")
    src.add_argument("--response", help="the response text")
    src.add_argument("--feedback", help="privileged feedback text (overrides the record's)")
    src.add_argument("--demo", help="privileged demo text (overrides the record's)")
    neg = p.add_argument_group("negatives (a --rollout record's own negatives, as scored in training, unless "
                               "--negatives-file, --feedback or --demo is given)")
    neg.add_argument("--negatives-file", help="jsonl of prompts to draw negatives from")
    neg.add_argument("--task",
                     help="else draw from this task's train split (run: task.name; else addition)")
    neg.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="task constructor option")
    neg.add_argument("-k", "--num-negatives", type=int, help="K negatives drawn (run: credit.num_negatives; else 4)")
    neg.add_argument("--aggregator", choices=["mean", "logmeanexp"], help="G over negatives (run: credit.aggregator)")
    neg.add_argument("--seed", type=int, default=0, help="seed for drawing negatives")
    p.add_argument("--temperature", type=float, help="log-probs at this temperature (run: rollout.temperature; else 1.0)")
    add_chat_template_arg(p)
    p.add_argument("--max-context-tokens", type=int,
                   help="cut demo and feedback to fit a rebuilt teacher context (run: teacher.max_context_tokens)")
    p.add_argument("--out", default="explain", help="output prefix: writes OUT.html, OUT.png, OUT.json")
    p.set_defaults(func=run, command="explain")


#: explain's defaults for a plain model, and what a run sets (the numbers training saw)
EXPLAIN_DEFAULTS = {"task": "addition", "num_negatives": 4, "aggregator": "mean", "temperature": 1.0}
EXPLAIN_FROM_RUN = {"num_negatives": run_setting("credit.num_negatives"), "aggregator": run_setting("credit.aggregator"),
                    "temperature": run_setting("rollout.temperature"),
                    "chat_template_kwargs": run_setting("model.chat_template_kwargs"),
                    "max_context_tokens": run_setting("teacher.max_context_tokens")}


@viz.cli_entry
def run(args) -> int:
    k_given = args.num_negatives is not None
    apply_run_config(args, EXPLAIN_FROM_RUN, EXPLAIN_DEFAULTS)
    if args.num_negatives < 1:
        raise UserError("--num-negatives must be >= 1")
    if args.temperature <= 0:
        raise UserError("--temperature must be > 0")
    teacher_ctx, negatives_from_record, negative_ctx = None, [], None
    if args.rollout:
        rec = read_rollout(args.rollout, args.index)
        messages, response = rec["prompt_messages"], rec["response_ids"]
        feedback = args.feedback if args.feedback is not None else rec.get("feedback")
        demo = args.demo if args.demo is not None else rec.get("demo")
        as_recorded = args.feedback is None and args.demo is None
        if as_recorded and isinstance(rec.get("teacher_context_ids"), list):
            teacher_ctx = rec["teacher_context_ids"]
        negatives_from_record = rec["negative_prompts"]
        recorded = rec.get("negative_context_ids")
        if (as_recorded and not args.negatives_file and not k_given and isinstance(recorded, list) and recorded
                and len(recorded) == len(negatives_from_record)
                and all(isinstance(c, list) and all(isinstance(i, int) for i in c) for c in recorded)):
            negative_ctx = recorded  # the very contexts training scored (swap=context and truncation included)
        if not response:
            raise UserError(f"{rec['_where']}: the response is empty: there is no token to explain")
    else:
        if args.messages:
            text = Path(args.messages).read_text(encoding="utf-8") if Path(args.messages).is_file() else args.messages
            try:
                messages = check_messages(json.loads(text), "--messages")
            except json.JSONDecodeError as err:
                raise UserError(f"--messages is not valid JSON: {err.msg}") from None
        elif args.prompt:
            messages = [{"role": "user", "content": args.prompt}]
        else:
            raise UserError("give --rollout FILE, or --prompt/--messages with --response")
        if args.response is None or args.response == "":
            raise UserError("the response is empty: give a non-empty --response")
        response, feedback, demo = args.response, args.feedback, args.demo

    if negative_ctx is not None:
        negatives = negatives_from_record
    elif args.negatives_file:
        pool = read_prompts(args.negatives_file)
    elif negatives_from_record:
        pool = negatives_from_record
    else:
        pool = [e.messages for e in task_from_args(args).examples("train")]
    if negative_ctx is None:
        negatives = pick_negatives(pool, messages, args.num_negatives, args.seed)

    model, tokenizer = load_model_from_args(args)
    if args.rollout:
        check_rollout_tokenizer(tokenizer, rec)
    e = explain(model, tokenizer, messages, response, feedback=feedback, demo=demo, negatives=negatives,
                temperature=args.temperature, aggregator=args.aggregator, teacher_context_ids=teacher_ctx,
                negative_context_ids=negative_ctx, chat_template_kwargs=args.chat_template_kwargs,
                max_context_tokens=args.max_context_tokens)
    paths = write_outputs(e, args.out)
    print(f"{len(e.ids)} tokens, K={len(negatives)}: Σ ΔV = {e.sums['dv']:.4f}, Σ S = {e.sums['s']:.4f}, "
          f"Σ G = {e.sums['g']:.4f}")
    for k, path in paths.items():
        print(f"wrote {k}: {path}")
    return 0
