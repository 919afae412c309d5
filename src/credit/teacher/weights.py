"""The teacher's weights θ_T (docs/method.md §1.4): the same network as the student, never trained.

One small class per kind, behind one interface (``build_teacher`` picks it):

- ``LiveTeacher``: the current student, without gradient.
- ``CopyTeacher``: a copy of the initial weights; with ``rate > 0`` the EMA θ_T ← (1−r)·θ_T + r·θ
  after each training step (``ema``), with ``rate = 0`` the initial weights (``frozen``).
- ``TrustRegionTeacher``: teacher logits (1−r)·z_ref + r·z_θ, with z_ref from the initial weights.
- ``LoraFrozenTeacher``: under LoRA, the base model (adapters disabled): no copy at all.
- ``LoraEmaTeacher``: under LoRA, a second adapter on the same base holding the EMA of the student's
  adapters, selected for the teacher's forwards. No weight of the student is written during a teacher
  pass (a pass between the student's forward and its backward, as logit mode runs it, leaves the
  autograd graph intact), and no second full model exists.

Every teacher answers ``modules(student)``: the modules whose logits, mixed with their weights, are
the teacher's (``[(module, 1.0)]``, or trust region's two), gathered for the block when the weights
are sharded (``credit.parallel``). ``gathered(student)`` holds them for many forwards (the loop
wraps a method's ``prepare`` in it) so that each rank enters the gather once, whatever number of
teacher forwards its own rows need.

Sharded (FSDP2), a copy teacher is sharded like the student and each rank updates its own shard of
θ_T from its own shard of θ (as the SDPO reference updates its teacher, shard by shard, never gathered).
The EMA accumulates in float32 when the weights are bf16 / fp16: there a step r·(θ − θ_T) below half
an ulp of θ_T rounds away, every step, and the teacher would never move (r = 0.05 and a 1 % weight
change: 5e-4 relative, under bf16's half ulp of 2e-3).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch

from credit import parallel
from credit.scoring import Packed, response_logits

EMA_ADAPTER = "credit_ema"
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _accumulator(t: torch.Tensor) -> torch.Tensor:
    """A detached copy to accumulate the EMA in: float32 for bf16 / fp16 tensors."""
    return t.detach().to(torch.float32 if t.dtype in _LOW_PRECISION else t.dtype, copy=True)


class _Teacher:
    """What every kind shares: the logits of its modules' mix, an optional EMA, a state dict."""

    kind: str
    rate: float = 0.0

    def __init__(self, share_prefix: bool = True):
        self.share_prefix = share_prefix

    def _modules(self, student) -> list[tuple[torch.nn.Module, float]]:
        raise NotImplementedError

    @contextlib.contextmanager
    def _selected(self, student) -> Iterator[None]:
        """What must hold while the teacher's modules run (an adapter switch); nothing by default."""
        yield

    def gathered(self, student):
        """The teacher's weights gathered for a block of forwards (a no-op unless sharded)."""
        return parallel.gathered(*(m for m, _ in self._modules(student)))

    @contextlib.contextmanager
    def modules(self, student) -> Iterator[list[tuple[torch.nn.Module, float]]]:
        """[(module, weight), ...]: the teacher's logits are Σ weight · logits(module)."""
        parts = self._modules(student)
        with self.gathered(student), self._selected(student):
            yield parts

    @torch.no_grad()
    def response_logits(self, student, packed: Packed) -> torch.Tensor:
        """Teacher logits predicting each response token: (N, R, V)."""
        with self.modules(student) as parts:
            (first, _), *rest = parts
            z = response_logits(first, packed, self.share_prefix)
            for module, weight in rest:  # trust region: (1−r)·z_ref + r·z_θ
                z = torch.lerp(z, response_logits(module, packed, self.share_prefix), weight)
        return z

    def update(self, student) -> None:
        """θ_T after a training step (a no-op except for an EMA)."""

    def own_weights(self) -> torch.nn.Module | None:
        """The module whose weights are this teacher's state (an EMA's copy); None when it is rebuilt on resume."""
        return None

    def state_dict(self) -> dict:
        return {}  # frozen / trust_region / live: rebuilt from the initial weights on resume

    def load_state_dict(self, state: dict) -> None:
        pass


class LiveTeacher(_Teacher):
    kind = "live"

    def _modules(self, student):
        return [(student, 1.0)]


class CopyTeacher(_Teacher):
    """A full copy of the initial weights (sharded like the student by ``prepare``), EMA'd when rate > 0."""

    def __init__(self, rate: float, student, share_prefix: bool = True,
                 prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        super().__init__(share_prefix)
        self.kind, self.rate = ("ema" if rate > 0 else "frozen"), rate
        self.ref = copy.deepcopy(student).eval().requires_grad_(False)
        if prepare is not None:
            self.ref = prepare(self.ref)
        # float32 accumulators of this rank's bf16 / fp16 shards (fp32 masters need none)
        self.master = {n: _accumulator(parallel.local(p)) for n, p in self.ref.named_parameters()
                       if self.rate > 0 and p.dtype in _LOW_PRECISION}

    def _modules(self, student):
        return [(self.ref, 1.0)]

    @torch.no_grad()
    def update(self, student) -> None:
        """θ_T ← (1−r)·θ_T + r·θ, shard by shard, as one foreach lerp."""
        if self.rate == 0.0:
            return
        pairs = list(zip(self.ref.named_parameters(), student.parameters(), strict=True))
        targets = [self.master.get(n, parallel.local(pt)) for (n, pt), _ in pairs]
        sources = [parallel.local(ps).detach().to(t.dtype) for t, (_, ps) in zip(targets, pairs)]
        torch._foreach_lerp_(targets, sources, self.rate)
        for (n, pt), _ in pairs:
            if n in self.master:
                parallel.local(pt).copy_(self.master[n])

    def own_weights(self) -> torch.nn.Module | None:
        return self.ref if self.rate > 0 else None

    def state_dict(self) -> dict:
        """An unsharded teacher's state (a sharded copy is saved as shards: ``own_weights``)."""
        if self.rate == 0.0:
            return {}
        return {"ref": self.ref.state_dict(), "master": {n: t.detach().cpu() for n, t in self.master.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "ref" not in state:
            return
        self.ref.load_state_dict(state["ref"])
        params = dict(self.ref.named_parameters())
        for n, t in self.master.items():  # a checkpoint without it (older, or fp32) restarts it from θ_T
            t.copy_(state.get("master", {}).get(n, params[n]))


class TrustRegionTeacher(CopyTeacher):
    """Logits (1−r)·z_ref + r·z_θ: the initial weights' copy, mixed with the live student."""

    def __init__(self, rate: float, student, share_prefix: bool = True, prepare=None):
        super().__init__(0.0, student, share_prefix, prepare)
        self.kind, self.rate = "trust_region", rate

    def _modules(self, student):
        return [(self.ref, 1.0 - self.rate), (student, self.rate)]

    def update(self, student) -> None:
        pass

    def own_weights(self) -> torch.nn.Module | None:
        return None  # the initial weights: rebuilt on resume

    def state_dict(self) -> dict:
        return {}


class LoraFrozenTeacher(_Teacher):
    """Under LoRA, θ_T = the base model: the student with its adapters disabled."""

    kind = "frozen"

    def _modules(self, student):
        return [(student, 1.0)]

    @contextlib.contextmanager
    def _selected(self, student):
        with student.disable_adapter():
            yield


def _lora_layers(model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class LoraEmaTeacher(_Teacher):
    """Under LoRA, θ_T = the base with a second adapter (``credit_ema``) holding the EMA of the student's.

    The adapter is added to the student at construction (before sharding, so FSDP shards it with its
    layer) and never trains. A teacher pass selects it by name on each LoRA layer (peft's
    ``set_adapter`` would also flip ``requires_grad``, so the layers' active name is set directly).
    """

    kind = "ema"

    def __init__(self, rate: float, student, share_prefix: bool = True):
        super().__init__(share_prefix)
        self.rate = rate
        trained = {n for n, p in student.named_parameters() if p.requires_grad}
        student.add_adapter(EMA_ADAPTER, copy.deepcopy(student.peft_config["default"]))
        params = dict(student.named_parameters())
        # student adapter name -> its EMA twin (same module, adapter key "default" -> "credit_ema")
        self.pairs = {n: n.replace(".default.", f".{EMA_ADAPTER}.") for n in trained}
        missing = [e for e in self.pairs.values() if e not in params]
        if missing:
            raise ValueError(f"LoRA EMA teacher: no EMA twin for {missing[:3]}; only adapter weights may train under LoRA")
        with torch.no_grad():
            for n, e in self.pairs.items():
                params[e].requires_grad_(False)
                params[e].copy_(params[n])
        student.base_model.set_adapter("default")  # peft activates what it adds: the student stays itself
        for n, p in student.named_parameters():
            p.requires_grad_(n in trained)
        self.master: dict[str, torch.Tensor] = {}

    def _modules(self, student):
        return [(student, 1.0)]

    @contextlib.contextmanager
    def _selected(self, student):
        layers = _lora_layers(student)
        saved = [layer._active_adapter for layer in layers]
        for layer in layers:
            layer._active_adapter = [EMA_ADAPTER]
        try:
            yield
        finally:
            for layer, name in zip(layers, saved):
                layer._active_adapter = name

    def ema_adapters(self, student) -> dict[str, torch.Tensor]:
        """The EMA adapter tensors (this rank's shards), keyed by the student adapter they follow."""
        params = dict(student.named_parameters())
        return {n: parallel.local(params[e]) for n, e in self.pairs.items()}

    @torch.no_grad()
    def update(self, student) -> None:
        """θ_T ← (1−r)·θ_T + r·θ over the adapters, shard by shard, as one foreach lerp."""
        if self.rate == 0.0:
            return
        params = dict(student.named_parameters())
        targets = [parallel.local(params[e]) for e in self.pairs.values()]
        sources = [parallel.local(params[n]).detach().to(t.dtype) for n, t in zip(self.pairs, targets)]
        torch._foreach_lerp_(targets, sources, self.rate)

    def state_dict(self) -> dict:
        return {}  # the EMA adapter is part of the student's own state dict

    def load_state_dict(self, state: dict) -> None:
        pass


def build_teacher(kind: str, rate: float, student, share_prefix: bool = True,
                  prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> _Teacher:
    """The teacher of ``kind`` for ``student`` (unsharded yet); ``prepare`` shards a full copy as the
    student will be sharded. Under LoRA an EMA adds its adapter to the student: call before sharding."""
    lora = _is_peft(student)
    if kind == "live":
        return LiveTeacher(share_prefix)
    if kind == "trust_region":
        if lora:
            raise ValueError("trust_region teacher with LoRA is not supported; use ema or frozen")
        return TrustRegionTeacher(rate, student, share_prefix, prepare)
    if kind not in ("ema", "frozen"):
        raise ValueError(f"teacher kind '{kind}'; allowed: ema, frozen, live, trust_region")
    rate = rate if kind == "ema" else 0.0
    if lora:
        return LoraEmaTeacher(rate, student, share_prefix) if rate > 0 else LoraFrozenTeacher(share_prefix)
    return CopyTeacher(rate, student, share_prefix, prepare)
