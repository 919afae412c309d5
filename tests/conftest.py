"""Shared fixtures. Everything here is offline (HF_HUB_OFFLINE=1 is set for the whole session).

- ``tiny_tokenizer`` (session): the real SmolLM2 tokenizer (vocab 49152, ChatML chat template,
  eos = pad = ``<|im_end|>``, left padding). Read from the converted SmolLM2 folder when it is cached,
  else from a tokenizer-only folder extracted once from the GGUF (~4 s the first time, ~0.2 s after).
- ``tiny_model_and_tokenizer`` (session): ``(model, tokenizer)`` with a random tiny Llama
  (hidden 32, 2 layers, 4 heads, 2 kv heads, tied embeddings, ~1.6M params, seed 0) on that
  vocabulary, in eval mode. **Shared: do not train or modify it**; use ``fresh_tiny_model``.
- ``fresh_tiny_model`` (function): a private deep copy of the tiny model, free to train.
- ``tiny_model_dir`` (session): that model and tokenizer saved as a Hugging Face folder.
- ``smollm2`` (session): ``(model, tokenizer)`` of the converted SmolLM2-135M-Instruct (fp32, eval);
  the first run converts the GGUF (~25 s on 2 cores). For ``@pytest.mark.slow`` tests only.

The credit cache is the user's (``$CREDIT_CACHE`` or ``~/.cache/credit``) so conversion happens once
per machine, not once per run; tests of the cache itself use ``tmp_path``.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that runs the loop with ``threads`` set must not leave other tests on its thread count."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from credit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_tokenizer):
    from credit.models import tiny_model

    return tiny_model(tiny_tokenizer, seed=0), tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_and_tokenizer, tmp_path_factory):
    """The tiny model and its tokenizer saved as a Hugging Face folder (for CLIs and ``load_model``)."""
    model, tok = tiny_model_and_tokenizer
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def fresh_tiny_model(tiny_model_and_tokenizer):
    return copy.deepcopy(tiny_model_and_tokenizer[0])


@pytest.fixture(scope="session")
def smollm2():
    from credit.models import load_model

    return load_model("smollm2-135m-instruct")
