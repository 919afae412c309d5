"""Pilot probe: SmolLM2-135M-Instruct on OpenBookQA when asked for the letter only (no tags).

24 held-out questions x 4 samples at T = 0.7, 16 new tokens; counts the first character of each response
and how often it is the right letter (the letter-only format has no scorer in the library: this only
asks whether such a task would start inside the 10-60% band).
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python study/pilot/mcq_letter_probe.py
"""

import collections

from credit.models import load_model
from credit.rollout import encode_prompts, sample
from credit.tasks import build_task

model, tok = load_model("smollm2-135m-instruct")
task = build_task("openbookqa", system_prompt="Reply with only the letter (A, B, C or D) of the correct option.")
examples = task.examples("test")[:24]
out = sample(model, tok, encode_prompts(tok, [e.messages for e in examples]), num_samples=4, max_new_tokens=16,
             temperature=0.7, seed=0)
first = collections.Counter(text.strip()[:1] for text in out.texts)
right = sum(text.strip()[:1] == examples[g].meta["answer"] for g, text in zip(out.group, out.texts))
print("first characters:", first.most_common(8))
print(f"first character is the right letter: {right} / {len(out.texts)}")
print("gold letters of the whole test split:", collections.Counter(e.meta["answer"] for e in task.examples("test")))
