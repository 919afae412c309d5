"""``credit plan CONFIG [overrides] --gpus N --gpu-memory GiB``: the memory of a run per rank, by
component, before anything is launched; whether it fits, and what to change if it does not.

The model is built on the meta device from its config (a hub id, a folder, a ``config.json``, or an
architecture of ``credit.models.ARCHITECTURES``); nothing is downloaded and no weight is allocated.
Each component is what the loop allocates (``credit.train``):

- weights: the student's parameters in fp32 (the masters; LoRA: the base too, except unsharded under bf16,
  where the loop loads the frozen base in bf16);
  gradients: fp32, for what trains; optimizer: AdamW's two moments (fp32), plus its step's temporaries;
  teacher: a full fp32 copy (ema, frozen, trust_region) or the EMA adapter under LoRA (live: none).
  ``parallel: fsdp`` divides these four by the ranks (FSDP2 shards them).
- compute copies: under bf16 autocast, the bf16 cast of every weight a forward uses (kept for the
  backward, and for the rollout's decode steps); under FSDP2, the weights gathered in bf16 (the whole
  student for the rollout, the whole teacher for its passes, about two layers during the update).
- rollout KV cache: keys and values of the sequences one generate call decodes (``rollout.micro_batch``
  capped at this rank's rollouts), prompt + response tokens.
- log-prob chunk: ``signal.head_logprobs``' (rows, V) fp32 chunk (≤ 256 MiB); with tied embeddings
  the embedding's own dense (V, H) gradient and their sum while it is added to the head's.
- activations: what autograd keeps for the backward of one update micro-batch, measured per token and
  per layer on this CPU with a shrunk copy of the architecture (same head dim, hidden sizes / f), under
  the run's precision, times f; with ``model.gradient_checkpointing`` the layer inputs plus one layer.
  Prefix sharing runs a group's prompt once (its KV cache indexed out to every row), in every pass,
  sharded or not; the loop turns it off with gradient checkpointing.
- teacher passes: the teacher's no-grad forward of one micro-batch (one layer's activations at a time)
  and its prefix KV cache.

The peak is the largest phase: rollout (weights, teacher, optimizer, copies, KV cache), teacher passes,
update (weights, teacher, optimizer, gradients, copies, chunk, activations). ``--measure`` runs two steps
of the config on this machine and prints the measured peak of tensor memory beside the plan.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import torch

GiB = 2**30
CHUNK_BYTES = 256 * 2**20  # credit.signal.DEFAULT_CHUNK_BYTES (not imported: the plan loads no loop code)


# ----------------------------------------------------------------------------- the model, on the meta device


def model_config(name: str, cache_dir: str | None = None):
    """A transformers config from a hub id, a folder, a config.json, an alias or an architecture name."""
    from transformers import AutoConfig

    from credit import models

    path = Path(name).expanduser()
    if name in models.ARCHITECTURES:
        return models._config_from(name, {})
    if name == models.DEFAULT_MODEL:
        folder = models.converted_path(name, cache_dir)
        return AutoConfig.from_pretrained(folder) if (folder / "config.json").exists() else \
            models._config_from("smollm2-135m", {})
    if path.is_file():
        fields = json.loads(path.read_text())
        if "model_type" not in fields:
            raise ValueError(f"{path}: a model config.json needs a 'model_type' (e.g. 'qwen3')")
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path}: no config.json in this folder; pass a model folder or its config.json")
        return AutoConfig.from_pretrained(path)
    try:
        return AutoConfig.from_pretrained(name, cache_dir=cache_dir)
    except OSError as e:
        raise ValueError(f"cannot fetch the config of '{name}' (offline, or not a model id): pass its config.json "
                         f"(model.name=path/to/config.json) or a folder that holds one") from e


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the plan needs of a causal LM (counted on the meta device)."""

    name: str  # the model class
    params: int  # every parameter, tied ones once
    trainable: int  # what trains: all, or the LoRA adapters
    layer_params: int  # one decoder layer
    embed_params: int  # input embedding (and the head when untied)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool


def _lora_params(model, target_modules: str | list[str], r: int) -> int:
    """r·(in + out) per adapted Linear: peft's "all-linear" is every Linear but the output head."""
    head = model.get_output_embeddings()
    names = [target_modules] if isinstance(target_modules, str) and target_modules != "all-linear" else target_modules
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if names == "all-linear" or any(name == t or name.endswith("." + t) for t in names):
            total += r * (module.in_features + module.out_features)
    return total


def model_shape(config, lora=None) -> Shape:
    """Count the parameters of ``config``'s causal LM built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    from credit.parallel import decoder_layers

    layer = decoder_layers(model)[0]
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    if head is not None and not tied:
        embed += head.weight.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    trainable = params if lora is None else _lora_params(model, lora.target_modules, lora.r)
    return Shape(type(model).__name__, params, trainable, sum(p.numel() for p in layer.parameters()), embed,
                 text.num_hidden_layers, text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size),
                 heads, getattr(text, "num_key_value_heads", None) or heads, head_dim, text.vocab_size, tied)


# ----------------------------------------------------------------------------- activations, measured on a shrunk copy


def _shrink_factor(shape: Shape) -> int:
    """The largest f dividing heads, kv heads, hidden and intermediate sizes with hidden / f >= 64."""
    best = 1
    for f in range(1, math.gcd(shape.heads, shape.kv_heads) + 1):
        if shape.heads % f or shape.kv_heads % f or shape.hidden % f or shape.intermediate % f:
            continue
        if shape.hidden // f >= 64:
            best = f
    return best


def _saved_bytes(config, layers: int, tokens: int, autocast: bool) -> int:
    """Bytes autograd keeps for the backward of one forward of ``layers`` decoder layers over ``tokens``
    (fp32 weights, CPU), without the weights, their autocast casts, and (tokens × tokens) attention
    probabilities (the CPU's bf16 attention keeps them; CUDA's fused kernels do not)."""
    from transformers import AutoModelForCausalLM

    fields = {**config.to_dict(), "num_hidden_layers": layers, "vocab_size": 256,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if fields.get("layer_types"):  # per-layer attention kinds (Qwen3, Gemma): the first ``layers`` of them
        fields["layer_types"] = fields["layer_types"][:layers]
    small = config.__class__.from_dict(fields)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        square = t.dim() >= 2 and t.shape[-1] == t.shape[-2] == tokens
        cast = t.dtype == torch.bfloat16 and (tuple(t.shape) in weight_shapes or tuple(t.shape[::-1]) in weight_shapes)
        if key not in weights and not square and not cast:
            saved[key] = storage.nbytes()
        return t

    ids = torch.randint(0, 256, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model.model(input_ids=ids)
    return sum(saved.values())


@functools.lru_cache(maxsize=32)
def _activation_rates(config_json: str, factor: int, dtype: str) -> tuple[float, float]:
    from transformers import AutoConfig

    fields = json.loads(config_json)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    autocast = dtype == "bfloat16"
    tokens = 32
    one, two = (_saved_bytes(config, n, tokens, autocast) for n in (1, 2))
    scale = factor * (2.0 if dtype == "float64" else 1.0)
    per_layer = (two - one) / tokens * scale
    fixed = max(0.0, one / tokens * scale - per_layer)
    return per_layer, fixed


def activation_rates(config, shape: Shape, dtype: str) -> tuple[float, float]:
    """(bytes per token per decoder layer, bytes per token outside the layers) that autograd keeps, for
    ``dtype`` ("float32", "bfloat16" under autocast, "float64"). Measured on a copy of the architecture
    with the hidden sizes and head counts divided by f (same head dim), then multiplied by f."""
    f = _shrink_factor(shape)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    fields = text.to_dict()
    fields.update(hidden_size=shape.hidden // f, intermediate_size=shape.intermediate // f,
                  num_attention_heads=shape.heads // f, num_key_value_heads=shape.kv_heads // f,
                  head_dim=shape.head_dim, tie_word_embeddings=shape.tied)
    for key in ("torch_dtype", "dtype", "quantization_config", "auto_map", "architectures"):
        fields.pop(key, None)
    return _activation_rates(json.dumps(fields, sort_keys=True, default=str), f, dtype)


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Plan:
    """Bytes per rank: ``components`` (name -> bytes, in the order printed), the phases' peaks, the peak."""

    components: dict[str, float]
    phases: dict[str, float]
    notes: list[str]

    @property
    def peak(self) -> float:
        return max(self.phases.values())


def _dtype_bytes(dtype: str) -> int:
    return {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def estimate(cfg, shape: Shape, rates: tuple[float, float], gpus: int = 1, prompt_tokens: int = 256,
             context_tokens: int | None = None) -> Plan:
    """The per-rank memory of one step of ``cfg`` (a validated TrainConfig) on ``gpus`` ranks."""
    per_layer, fixed = rates
    fsdp = getattr(cfg, "parallel", "ddp") == "fsdp" and gpus > 1
    shard = gpus if fsdp else 1
    dtype = cfg.model.dtype
    master = 8 if dtype == "float64" else 4
    compute = _dtype_bytes(dtype)
    lora = cfg.model.lora is not None
    method_uses_teacher = cfg.method != "grpo"
    kind = cfg.teacher.kind if method_uses_teacher else "live"
    p, pt = shape.params, shape.trainable

    # LoRA unsharded under bf16: the frozen base in bf16, the adapters in fp32 (as the loop loads them)
    bf16_base = lora and dtype == "bfloat16" and not fsdp
    weights = p * (compute if bf16_base else master) / shard + (pt * master / shard if lora else 0)
    grads = pt * master / shard
    ddp_buckets = grads if gpus > 1 and not fsdp else 0.0  # DDP's gradient buckets: another copy
    optimizer = 2 * pt * master / shard
    optimizer_step = pt * master / shard  # foreach AdamW's temporaries (about one moment's size)
    if not method_uses_teacher or kind == "live":
        teacher = 0.0
    elif lora:
        teacher = pt * master / shard if kind == "ema" else 0.0
    else:
        teacher = p * master / shard
    full_copy_teacher = method_uses_teacher and not lora and kind in ("ema", "frozen", "trust_region")

    # compute copies
    mixed = dtype == "bfloat16"
    if fsdp:
        gathered = p * compute  # rollout: the whole student gathered in the compute dtype
        gathered_teacher = p * compute if full_copy_teacher else gathered
        gathered_update = 2 * shape.layer_params * compute + shape.embed_params * compute
        copies_rollout, copies_teacher, copies_update = gathered, gathered_teacher, gathered_update
    else:
        # autocast's bf16 copy of each weight a forward uses: kept for the backward, and cached through the
        # rollout for the weights that train (a frozen base is cast op by op there)
        casts = (pt if bf16_base else p) * compute if mixed else 0.0
        cached = (pt if lora else p) * compute if mixed else 0.0
        copies_rollout, copies_teacher, copies_update = cached, cached, casts

    # rollout KV cache
    r = cfg.rollout
    local_rollouts = max(1, r.prompts_per_step * r.samples_per_prompt // gpus)
    sequences = min(r.micro_batch, local_rollouts)
    kv_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * compute
    kv_cache = sequences * (prompt_tokens + r.max_new_tokens) * kv_token
    sampling = 3 * sequences * shape.vocab * 4  # the step's fp32 logits, their processed copy, the probabilities

    # update: one micro-batch
    o = cfg.optim
    n = min(o.micro_batch, local_rollouts)
    resp = r.max_new_tokens
    share = o.share_prefix and not cfg.model.gradient_checkpointing  # as the loop decides, for every pass
    groups = math.ceil(n / r.samples_per_prompt) if share else n
    tokens = groups * prompt_tokens + n * resp if share else n * (prompt_tokens + resp)
    prefix_kv = n * prompt_tokens * kv_token if share else 0.0  # the shared prompt's cache, indexed to n rows
    full_acts = tokens * (per_layer * shape.layers + fixed) + prefix_kv
    residual = 4 if dtype != "float64" else 8
    ckpt_acts = tokens * (shape.layers * shape.hidden * residual + per_layer + fixed)
    acts = ckpt_acts if cfg.model.gradient_checkpointing else full_acts
    rows = max(1, CHUNK_BYTES // (4 * shape.vocab))
    chunk = min(rows, n * resp) * shape.vocab * 4
    if shape.tied and not lora:  # the embedding's dense gradient and the head's, and their sum (out of place)
        chunk += 2 * shape.vocab * shape.hidden * master

    # teacher passes: one micro-batch of contexts, no grad (a layer's activations at a time) and its KV cache
    ctx = context_tokens or min(cfg.teacher.max_context_tokens, prompt_tokens + 2 * resp + 128)
    teacher_tokens = n * (ctx + resp)
    teacher_pass = teacher_tokens * per_layer + n * (ctx + resp) * kv_token * (1 if share else 0) \
        + min(rows, n * resp) * shape.vocab * 4 * (2 if kind == "trust_region" else 1)
    logit_mode = method_uses_teacher and cfg.credit.mode == "logits"
    if logit_mode and fsdp:  # logit mode's teacher passes run inside the update: the whole teacher gathered
        copies_update += gathered_teacher

    persistent = weights + teacher + optimizer
    components = {
        "weights": weights, "gradients": grads + ddp_buckets, "optimizer": optimizer + optimizer_step,
        "teacher": teacher, "compute copies": max(copies_rollout, copies_teacher, copies_update),
        "rollout KV cache": kv_cache + sampling, "log-prob chunk": chunk,
        "activations (no checkpointing)": full_acts, "activations (checkpointing)": ckpt_acts,
        "teacher pass": teacher_pass if method_uses_teacher else 0.0,
    }
    phases = {
        "rollout": persistent + copies_rollout + kv_cache + sampling,
        "teacher": persistent + copies_teacher + (teacher_pass if method_uses_teacher else 0.0),
        "update": persistent + grads + ddp_buckets + copies_update + chunk + acts
        + (teacher_pass if logit_mode else 0.0),
        "optimizer step": persistent + grads + ddp_buckets + optimizer_step,
    }
    notes = [f"{tokens:,} tokens per update micro-batch ({n} rows"
             + (f", {groups} shared prompt{'s' * (groups > 1)}" if share else "") + ")"]
    return Plan(components, phases, notes)


def _with(cfg, **changes):
    """A copy of a frozen TrainConfig with ``section.key`` changes (validated again)."""
    from credit.config import TrainConfig

    tree = cfg.model_dump()
    for dotted, value in changes.items():
        node = tree
        *path, key = dotted.split("__")
        for part in path:
            node = node[part]
        node[key] = value
    return TrainConfig.model_validate(tree)


def suggestions(cfg, shape_of, rates_of, gpus: int, budget: float, **kw) -> list[tuple[str, float]]:
    """Changes that bring the peak under ``budget`` bytes, fewest changes first, each with its peak: among
    gradient checkpointing, a smaller micro-batch, FSDP over these or more GPUs (up to 64), and LoRA."""
    sharded = getattr(cfg, "parallel", "ddp") == "fsdp"
    ckpt = [False, True] if not cfg.model.gradient_checkpointing else [True]
    batches, mb = [cfg.optim.micro_batch], cfg.optim.micro_batch
    while mb > 1:
        mb //= 2
        batches.append(mb)
    layouts = [(sharded, gpus)] + ([(True, gpus)] if gpus > 1 and not sharded else [])
    layouts += [(True, g) for g in (2, 4, 8, 16, 32, 64) if g > gpus]
    found = []
    for lora in ([False, True] if cfg.model.lora is None else [False]):
        for fsdp, g in layouts:
            for checkpointing in ckpt:
                for batch in batches:
                    changes, labels = {}, []
                    if checkpointing != cfg.model.gradient_checkpointing:
                        changes["model__gradient_checkpointing"] = checkpointing
                        labels.append("model.gradient_checkpointing=true")
                    if batch != cfg.optim.micro_batch:
                        changes["optim__micro_batch"] = batch
                        labels.append(f"optim.micro_batch={batch}")
                    if fsdp != sharded:
                        changes["parallel"] = "fsdp"
                        labels.append("parallel=fsdp")
                    if lora:
                        changes["model__lora"] = {"r": 16}
                        labels.append("model.lora={r: 16}")
                    if g != gpus:
                        labels.append(f"--gpus {g}")
                    if not labels:
                        continue
                    try:
                        c = _with(cfg, **changes)
                        value = estimate(c, shape_of(c), rates_of(c), g, **kw).peak
                    except ValueError:  # a combination the config refuses
                        continue
                    if value <= budget:
                        found.append((len(labels), g, -batch, " ".join(labels), value))
                        break  # a smaller micro-batch with the same other changes fits too
    return [(label, value) for *_, label, value in sorted(found)]


def task_prompt_tokens(cfg, examples: int = 64) -> int | None:
    """The longest prompt, in tokens, among the first ``examples`` training prompts of the config's task
    with its model's tokenizer and chat template; None when either cannot be loaded here."""
    try:
        from credit.models import load_tokenizer
        from credit.rollout import encode_prompts
        from credit.tasks import build_task

        tok = load_tokenizer(cfg.model.name, cache_dir=cfg.model.cache_dir)
        train = build_task(cfg.task.name, **cfg.task.options).examples("train")[:examples]
        ids = encode_prompts(tok, [e.messages for e in train], chat_template_kwargs=cfg.model.chat_template_kwargs)
        return max(len(i) for i in ids) if ids else None
    except Exception:  # an offline hub id, a bare config.json, a task whose data is elsewhere: the default stands
        return None


def make_plan(cfg, gpus: int = 1, prompt_tokens: int = 256, context_tokens: int | None = None):
    """(Plan, Shape, transformers config) for a TrainConfig."""
    config = model_config(cfg.model.name, cfg.model.cache_dir)
    shape = model_shape(config, cfg.model.lora)
    plan = estimate(cfg, shape, activation_rates(config, shape, cfg.model.dtype), gpus, prompt_tokens, context_tokens)
    return plan, shape, config


def format_plan(cfg, plan: Plan, shape: Shape, gpus: int, gpu_memory: float | None, prompt_tokens: int,
                fits_with: list[tuple[str, float]] | None = None, measured: float | None = None) -> str:
    unit, size = ("GiB", GiB) if plan.peak >= GiB else ("MiB", 2**20)
    g = lambda b: f"{b / size:,.2f}"  # noqa: E731
    lora = cfg.model.lora
    train = f"LoRA r={lora.r} ({shape.trainable / 1e6:,.1f}M trained)" if lora else "full fine-tuning"
    par = getattr(cfg, "parallel", "ddp") if gpus > 1 else "one process"
    lines = [f"{shape.name}: {shape.params / 1e9:,.2f}B parameters, {shape.layers} layers, hidden {shape.hidden:,}, "
             f"vocabulary {shape.vocab:,}{', tied embeddings' if shape.tied else ''}",
             f"{cfg.method} ({cfg.credit.mode} mode, teacher {cfg.teacher.kind}), {cfg.model.dtype}, {train}, {par}"
             + (f" over {gpus} GPUs" if gpus > 1 else ""),
             f"assumed: prompts of {prompt_tokens} tokens, responses of {cfg.rollout.max_new_tokens}; "
             + "; ".join(plan.notes), "",
             f"{'component':<34}{unit + ' per rank':>14}"]
    used = "activations (checkpointing)" if cfg.model.gradient_checkpointing else "activations (no checkpointing)"
    for name, b in plan.components.items():
        mark = "" if not name.startswith("activations") or name == used else "  (not used)"
        lines.append(f"{name:<34}{g(b):>14}{mark}")
    lines.append("")
    lines.append("peak by phase: " + ", ".join(f"{k} {g(v)}" for k, v in plan.phases.items()) + f" {unit}")
    verdict = f"peak {g(plan.peak)} {unit} per rank"
    if gpu_memory:
        ok = plan.peak <= gpu_memory * GiB
        verdict += f" of {gpu_memory:g} GiB: " + ("fits" if ok else "does NOT fit")
    lines.append(verdict)
    if measured is not None:
        lines.append(f"measured on this machine (tensor memory, peak over two steps): {g(measured)} {unit} "
                     f"(plan / measured = {plan.peak / measured:.2f})")
    if fits_with:
        lines.append("fits with: " + "; ".join(f"{label} ({g(v)} {unit})" for label, v in fits_with[:4]))
    elif gpu_memory and plan.peak > gpu_memory * GiB:
        lines.append("no single change tried here fits (checkpointing, micro-batch, FSDP up to 64 GPUs, LoRA)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- measuring a run's peak


class _TensorPeak(torch.utils._python_dispatch.TorchDispatchMode):
    """Live bytes of the tensor storages created inside (deduplicated by storage), and their peak."""

    def __init__(self):
        super().__init__()
        import weakref

        self._weakref = weakref
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self.seen:
            return
        self.seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)

        def free(key=key, size=size):
            self.seen.discard(key)
            self.live -= size

        self._weakref.finalize(storage, free)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output that shares an input's storage (a view, an in-place op) allocated nothing
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out


def _storages_bytes(*modules) -> int:
    seen = {}
    for m in modules:
        if m is None:
            continue
        for t in [*m.parameters(), *m.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def measure(cfg, steps: int = 2) -> float:
    """Peak tensor memory (bytes) of ``steps`` training steps of ``cfg`` in this process: the weights and
    the teacher's copy that exist before the first step, plus the peak of what the steps allocate."""
    from credit.train import Trainer

    trainer = Trainer(cfg)
    before = _storages_bytes(trainer.unwrapped, getattr(trainer.teacher, "ref", None))
    with _TensorPeak() as tracker:
        for step in range(steps):
            trainer.run_step(step)
    return before + tracker.peak


# ----------------------------------------------------------------------------- the command


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="Memory per rank of a training config, by component; whether it fits.")
    p.add_argument("config", nargs="?", help="YAML config (see configs/); omitted: all defaults")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (model.name=path/to/config.json)")
    p.add_argument("--gpus", type=int, default=1, help="ranks (processes) the run would use (default 1)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GiB", help="memory of one GPU, e.g. 80")
    p.add_argument("--prompt-tokens", default="auto", help="prompt length to plan for; auto (default): the "
                   "longest of the task's first 64 prompts when its tokenizer loads here, else 256")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="teacher context length (default: prompt + 2 responses + 128, capped by teacher.max_context_tokens)")
    p.add_argument("--measure", action="store_true", help="also run two steps here and print the measured peak")
    p.add_argument("--json", dest="json_out", help="write the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from credit.config import load_config

    positional = [args.config, *args.overrides] if args.config is not None else list(args.overrides)
    config, overrides = (positional[0], positional[1:]) if positional else (None, [])
    if config is not None and "=" in config and not os.path.exists(config):
        config, overrides = None, positional
    if args.gpus < 1:
        raise ValueError(f"--gpus {args.gpus}: at least 1")
    cfg = load_config(config, overrides)
    if args.prompt_tokens == "auto":
        prompt_tokens = task_prompt_tokens(cfg) or 256
    elif str(args.prompt_tokens).isdigit() and int(args.prompt_tokens) > 0:
        prompt_tokens = int(args.prompt_tokens)
    else:
        raise ValueError(f"--prompt-tokens {args.prompt_tokens}: a positive number of tokens, or auto")
    kw = dict(prompt_tokens=prompt_tokens, context_tokens=args.context_tokens)
    plan, shape, hf_config = make_plan(cfg, args.gpus, **kw)
    fits_with = None
    if args.gpu_memory and plan.peak > args.gpu_memory * GiB:
        shapes = {}

        def shape_of(c):
            key = None if c.model.lora is None else (c.model.lora.r, str(c.model.lora.target_modules))
            if key not in shapes:
                shapes[key] = model_shape(hf_config, c.model.lora)
            return shapes[key]

        fits_with = suggestions(cfg, shape_of, lambda c: activation_rates(hf_config, shape_of(c), c.model.dtype),
                                args.gpus, args.gpu_memory * GiB, **kw)
    measured = measure(cfg) if args.measure else None
    print(format_plan(cfg, plan, shape, args.gpus, args.gpu_memory, prompt_tokens, fits_with, measured))
    if args.json_out:
        from credit.analysis.viz import write_json

        write_json(args.json_out, {"model": dataclasses.asdict(shape), "gpus": args.gpus, "gpu_memory_gib": args.gpu_memory,
                                   "components_gib": {k: v / GiB for k, v in plan.components.items()},
                                   "phases_gib": {k: v / GiB for k, v in plan.phases.items()},
                                   "peak_gib": plan.peak / GiB, "measured_gib": None if measured is None else measured / GiB,
                                   "fits_with": fits_with})
    return 0
