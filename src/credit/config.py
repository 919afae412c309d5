"""The training config: one typed tree, loaded from YAML with ``key.sub=value`` overrides, every field
documented once, validated before any model loads, frozen afterwards.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A config that cannot run: the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters (peft syntax).")


class ModelConfig(_Section):
    name: str = Field("smollm2-135m-instruct", description="Hugging Face id, local path, or the offline default alias.")
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        "float32", description="Compute precision. bfloat16 runs under autocast over float32 master weights "
        "and optimizer state (the EMA teacher accumulates in float32); float16 is refused (use bfloat16); float64 "
        "for numerical checks.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less memory, "
                                         "~30% more compute); turns off optim.share_prefix for the student's forward.")
    cache_dir: str | None = Field(None, description="Where the offline default is converted once (default ~/.cache/credit).")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights (the EMA teacher is then over adapters).")
    merge_lora_on_save: bool = Field(False, description="With model.lora: write final/ as a plain model with the "
                                     "adapters merged into the weights (loads without peft) instead of the adapters alone.")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra variables of the chat template for student, teacher and evaluation "
        "prompts, e.g. {enable_thinking: false} for Qwen3 (a template that does not read one ignores it).")


class TaskConfig(_Section):
    name: str = Field("addition", description="A task of credit.tasks.TASKS.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the task's constructor.")


class RolloutConfig(_Section):
    prompts_per_step: int = Field(8, ge=1, description="B: prompt groups per step (CREDIT needs >= 2 to contrast).")
    samples_per_prompt: int = Field(8, ge=1, description="G: rollouts per prompt.")
    max_new_tokens: int = Field(24, ge=1, description="Response length cap; a response that hits it is 'truncated'.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; all log-probs are taken at it.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (the response ends after one).")
    micro_batch: int = Field(64, ge=1, description="Sequences per generate call.")
    backend: str = Field(
        "generate", description="The rollout engine (credit.rollout.ENGINES): generate: transformers generate; loop: a "
        "decode loop that drops ended rows (faster when decoding is compute-bound, e.g. CPU); static: generate with a "
        "static cache (compiled on CUDA); continuous: continuous batching over a slot KV cache (an ended response's "
        "slot goes to the next queued sample; returns the tokens' log-probs, which on-policy stand in for the ℓS "
        "pass that sequence mode's score needs). All sample the same distribution.")

    @field_validator("backend")
    @classmethod
    def _known_engine(cls, name: str) -> str:
        from credit.rollout import ENGINES  # a light import: the registry, not torch

        if name not in ENGINES:
            raise PydanticCustomError("engine", "must be one of {choices}", {"choices": ", ".join(ENGINES)})
        return name


class TeacherConfig(_Section):
    kind: Literal["ema", "frozen", "live", "trust_region"] = Field(
        "ema", description="ema: θ_T ← (1−r)θ_T + rθ after each step; frozen: r=0; live: current student; "
        "trust_region: logits (1−r)·z_ref + r·z_θ.")
    update_rate: float = Field(0.05, ge=0, le=1, description="r of the EMA / trust-region teacher.")
    success_threshold: float = Field(1.0, description="A rollout with reward >= this is a demo for its group's peers.")
    dont_reprompt_on_self_success: bool = Field(True, description="Never use a rollout as its own demo.")
    strip_thinking: bool = Field(True, description="Remove <think>…</think> from demos.")
    include_feedback: bool = Field(True, description="Put the environment's feedback in the teacher context.")
    feedback_only_without_demo: bool = Field(False, description="Use feedback only when no demo exists.")
    max_context_tokens: int = Field(2048, ge=16, description="Teacher context cap; demo and feedback are cut first.")


class MethodConfig(_Section):
    mode: Literal["token", "logits", "sequence"] = Field(
        "token", description="How credit reaches the gradient (docs/method.md): per sampled token, over a vocabulary support, or per "
        "sequence (Σ_t r^λ_t group-normalized over the rollouts with a teacher signal; with method=sdpo: Σ_t ΔV_t).")
    lam: float = Field(0.5, ge=0, le=1, description="CREDIT λ: r = (1−λ)·ΔV + λ·S (0 = SDPO, 1 = pure input-specific).")
    num_negatives: int = Field(1, ge=1, description="K negative contexts per sample.")
    negative_strategy: Literal["random", "roll", "all"] = Field(
        "roll", description="How negative prompts are drawn from other groups: roll (a derangement of the groups; a "
        "group's rollouts share their negatives, so prefix sharing runs those contexts once), random (K per rollout), all.")
    swap: Literal["input", "context"] = Field("input", description="Swap only the input (default) or use the other prompt's whole teacher context.")
    aggregator: Literal["mean", "logmeanexp"] = Field("mean", description="G_t = mean_k ℓN^k_t, or log mean_k exp ℓN^k_t.")
    alpha: float = Field(1.0, ge=0, le=1, description="Divergence of logit mode: 0 forward KL, 1 reverse KL, else JSD(α).")
    top_k: int | None = Field(100, ge=1, description="Logit mode support: the student's top-K (None: full vocabulary).")
    tail: bool = Field(True, description="Add a tail bucket for the mass outside the top-K (else renormalize).")
    reward_to_go: bool = Field(False, description="Token mode: advantage Σ_{s≥t} γ^{s−t} r_s instead of r_t.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of reward-to-go.")
    clip_advantage: float | None = Field(None, gt=0, description="|A| ≤ c for token mode (None: no clip).")
    sequence_length_normalize: bool = Field(False, description="Sequence mode: use the mean of r^λ_t instead of the sum.")
    grpo_weight: float = Field(0.0, ge=0, le=1, description="w in A = w·A_GRPO + (1−w)·A_SD (SDPO paper Eq. 3).")
    grpo_scale_std: bool = Field(True, description="Divide GRPO's group-centered reward by the group std (False: Dr. GRPO).")


class OptimConfig(_Section):
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm (None: off).")
    epochs: int = Field(1, ge=1, description="Passes over each step's rollouts (>1 is off-policy).")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per epoch (>1 is off-policy).")
    micro_batch: int = Field(16, ge=1, description="Sequences per forward/backward (gradient accumulation inside a mini-batch).")
    share_prefix: bool = Field(True, description="Run identical contexts once per micro-batch and share their KV cache "
                               "(the same function, with gradients; off for models without a transformers DynamicCache).")
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = Field(
        "token-mean", description="The one reduction of per-token losses (docs/method.md §1.8).")
    eps_low: float = Field(0.2, ge=0, description="PPO clip ε_low (off-policy updates).")
    eps_high: float = Field(0.28, ge=0, description="PPO clip ε_high (off-policy updates).")
    is_clip: float = Field(2.0, gt=0, description="Cap of the distillation importance weight min(exp(ℓS−ℓold), c).")


class EvalConfig(_Section):
    every: int = Field(0, ge=0, description="Evaluate every N steps (0: only before and after).")
    samples: int = Field(4, ge=1, description="n samples per held-out item (mean@n).")
    temperature: float = Field(0.7, gt=0, description="Evaluation sampling temperature.")
    max_new_tokens: int | None = Field(None, ge=1, description="Default: rollout.max_new_tokens.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N held-out items.")
    before: bool = Field(True, description="Evaluate before training.")


class LogConfig(_Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    wandb: bool = Field(False, description="Log to Weights & Biases (needs `wandb`).")
    wandb_project: str = Field("credit", description="W&B project.")
    wandb_entity: str | None = Field(None, description="W&B entity (team or user; default: your W&B default).")
    wandb_run_name: str | None = Field(None, description="W&B run name (default: the name of out_dir).")
    wandb_tags: list[str] = Field(default_factory=list, description="W&B tags.")
    rollouts_every: int = Field(1, ge=0, description="Write sampled rollouts with their teacher contexts every N steps (0: never).")
    rollouts_per_step: int = Field(4, ge=0, description="How many rollouts to write per logged step.")
    progress: bool = Field(True, description="Show a progress bar.")
    kl_every: int = Field(
        0, ge=0, description="Every N steps, log policy/kl_initial: KL(π_θ ‖ π_init) on the step's sampled tokens "
        "(k3 estimator, at the sampling temperature), one more forward pass that step. π_init: under LoRA the base "
        "(adapters off); else a frozen teacher's copy, or one more copy of the weights (0: never).")


class TrainConfig(_Section):
    method: Literal["grpo", "sdpo", "credit"] = Field("credit", description="Outcome RL, self-distillation, or CREDIT.")
    seed: int = Field(0, description="Seeds sampling, data order and negatives.")
    steps: int = Field(30, ge=1, description="Training steps (one rollout batch each).")
    out_dir: str = Field("runs/quickstart", description="Run directory: config, metrics, rollouts, checkpoints.")
    checkpoint_every: int = Field(10, ge=0, description="Write an atomic checkpoint every N steps (0: only at the end).")
    checkpoint_keep: int = Field(1, ge=1, description="Keep the last N checkpoints (checkpoints/step-*.pt; checkpoint.pt "
                                 "is the latest). With eval.every, checkpoint-best.pt keeps the best held-out mean@n.")
    device: str | None = Field(None, description="cpu, cuda, ... (default: what accelerate picks).")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With several processes (torchrun / accelerate launch): ddp replicates the model and "
        "all-reduces gradients; fsdp shards student, teacher and optimizer state with PyTorch's FSDP2 (fully_shard "
        "per decoder layer + root) and gathers the weights once per rollout, evaluation and teacher pass. "
        "One process: no effect.")
    dist_timeout_s: float = Field(600.0, gt=0, description="Timeout of every collective (seconds): ranks that disagree "
                                  "on what to run fail with an error naming the stage instead of hanging.")
    threads: int | Literal["auto"] | None = Field(
        "auto", description="CPU threads: auto = before each step, the cores other processes did not keep busy "
        "during the last one, at least one, at most OMP_NUM_THREADS when that is set (credit.threads); "
        "a number fixes them; null = torch's default, untouched.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    credit: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        c, b = self.credit, self.rollout.prompts_per_step
        if self.method == "credit":
            if b < 2:
                raise ValueError(
                    "rollout.prompts_per_step=1: CREDIT contrasts against other prompt groups of the batch; "
                    "set rollout.prompts_per_step >= 2 (or method: sdpo)")
            if c.mode == "logits" and c.alpha != 1.0:
                raise ValueError(
                    f"credit.alpha={c.alpha}: logit-mode CREDIT is defined for the reverse-KL family; set credit.alpha: 1.0")
            if c.negative_strategy in ("random", "roll") and c.num_negatives > b - 1:
                raise ValueError(
                    f"credit.num_negatives={c.num_negatives} but only {b - 1} other prompt groups per batch; "
                    f"set credit.num_negatives <= {b - 1}, raise rollout.prompts_per_step, or use negative_strategy: all")
        if self.method == "grpo" and c.grpo_weight not in (0.0, 1.0):
            raise ValueError("method=grpo uses only the outcome advantage; credit.grpo_weight applies to sdpo/credit")
        if self.parallel == "fsdp" and self.model.lora is not None and self.model.merge_lora_on_save:
            raise ValueError("model.merge_lora_on_save with parallel=fsdp: final/ holds the adapters; merge them after "
                             "training (peft's merge_and_unload on final/), or set model.merge_lora_on_save: false")
        if self.teacher.kind == "trust_region" and self.model.lora is not None:
            raise ValueError("teacher.kind=trust_region with model.lora is not supported; use ema or frozen")
        if self.model.dtype == "float16":  # fp16 needs loss scaling, whose skipped steps the loop does not drive
            raise ValueError("model.dtype=float16 is not supported (it needs loss scaling); use model.dtype: bfloat16")
        return self


# ----------------------------------------------------------------------------- loading


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


#: Names other trainers (TRL, verl) use for a field, so a user coming from them is pointed at ours.
KEY_ALIASES = {
    "learning_rate": "optim.lr", "lr": "optim.lr", "warmup": "optim.warmup_steps", "max_grad_norm": "optim.grad_clip",
    "num_generations": "rollout.samples_per_prompt", "n": "rollout.samples_per_prompt",
    "max_completion_length": "rollout.max_new_tokens", "max_new_tokens": "rollout.max_new_tokens",
    "per_device_train_batch_size": "rollout.prompts_per_step", "lambda": "credit.lam", "lamda": "credit.lam",
    "max_steps": "steps", "output_dir": "out_dir", "report_to": "log.wandb", "model_name_or_path": "model.name",
}


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (sections included), e.g. ``optim``, ``optim.lr``."""
    model = model or TrainConfig
    keys = []
    for name, f in model.model_fields.items():
        keys.append(prefix + name)
        ann = f.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else LoraConfig if name == "lora" else None
        if sub is not None:
            keys.extend(config_keys(sub, f"{prefix}{name}."))
    return keys


def suggest_key(key: str) -> str | None:
    """The config key a misspelt or misplaced ``key`` most likely meant (None: no good guess)."""
    import difflib

    keys = config_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same_leaf:  # the right name in the wrong section: `lr` for `optim.lr`
        return same_leaf[0]
    if leaf.lower() in KEY_ALIASES:
        return KEY_ALIASES[leaf.lower()]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if close:
        return close[0]
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    leaves = [k.removeprefix(section) for k in keys if k.startswith(section) and "." not in k.removeprefix(section)]
    close = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.6)
    return section + close[0] if close else None


def _format(err: ValidationError, source: str) -> str:
    """All problems of a config on one line (the CLI prints one line per error), each naming its key."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            guess = suggest_key(key)
            hint = f"did you mean `{guess}`?" if guess else "check its spelling against `credit train --help-config`"
            parts.append(f"{key}: unknown key; {hint}")
        elif not e["loc"]:  # a combination of keys (model validator): the message names them
            parts.append(e["msg"].removeprefix("Value error, "))
        else:
            parts.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid config ({source}): " + "; ".join(parts)


def parse_value(raw: str) -> Any:
    """An override's value as YAML (``true``, ``3``, ``0.5``, ``[a, b]``); text YAML cannot read (``*``,
    ``[``) is taken as that text, not an error."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def load_config(path: str | Path | dict | TrainConfig | None = None, overrides: list[str] = ()) -> TrainConfig:
    """YAML file (optional) + ``section.key=value`` overrides (values parsed as YAML) -> TrainConfig.
    From Python, ``path`` may also be a dict of sections or a TrainConfig (``credit.fit``)."""
    tree: dict = {}
    source = "defaults"
    if isinstance(path, (dict, TrainConfig)):
        source = "the given config"
        tree = copy.deepcopy(path.model_dump(mode="json") if isinstance(path, TrainConfig) else path)
    elif path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), parse_value(raw))
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e, source + (" + overrides" if overrides else ""))) from None


def describe() -> str:
    """Every field with its type, default and help: the text of ``credit train --help-config``."""
    out = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            if name == "lora":
                out.append(f"{prefix}{name}: null | {{r, alpha, dropout, target_modules}}  {f.description}")
                walk(LoraConfig, f"{prefix}{name}.")
                continue
            default = f.default if f.default_factory is None else f.default_factory()
            out.append(f"{prefix}{name} = {default!r}  {f.description}")

    walk(TrainConfig, "")
    out += ["", "Tasks (task.name) and their options (task.options: {key: value}):"]
    from credit.tasks import task_options

    for name, (options, extra) in task_options().items():
        shown = ", ".join(f"{k}={_short(v)}" if v is not inspect.Parameter.empty else f"{k} (required)"
                          for k, v in options.items())
        out.append(f"  {name}: {shown or '(none)'}{'; also ' + extra if extra else ''}")
    return "\n".join(out)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def dump(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
