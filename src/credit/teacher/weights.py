"""The teacher's weights θ_T (docs/method.md §1.4): the same network as the student, never trained.

- ``ema``: θ_T ← (1−r)·θ_T + r·θ after each training step (r = 0 is ``frozen``).
- ``frozen``: the initial weights.
- ``live``: the current student, without gradient.
- ``trust_region``: teacher logits (1−r)·z_ref + r·z_θ, with z_ref from the initial weights.

Under LoRA no second full model is kept: ``frozen`` is the base model with adapters disabled, and
``ema`` keeps an EMA copy of the adapter tensors only, swapped in for the teacher's forward pass.

The EMA accumulates in float32 when the weights are bf16 / fp16: there a step r·(θ − θ_T) below half
an ulp of θ_T rounds away, every step, and the teacher would never move (r = 0.05 and a 1 % weight
change: 5e-4 relative, under bf16's half ulp of 2e-3).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from credit.scoring import Packed, response_logits


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _adapter_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _accumulator(t: torch.Tensor) -> torch.Tensor:
    """A detached copy to accumulate the EMA in: float32 for bf16 / fp16 tensors."""
    return t.detach().to(torch.float32 if t.dtype in _LOW_PRECISION else t.dtype, copy=True)


class Teacher:
    """Holds θ_T and gives the teacher's response logits for a packed batch."""

    def __init__(self, kind: str, rate: float, student, share_prefix: bool = True):
        if kind not in ("ema", "frozen", "live", "trust_region"):
            raise ValueError(f"teacher kind '{kind}'; allowed: ema, frozen, live, trust_region")
        self.kind, self.rate = kind, (0.0 if kind == "frozen" else rate)
        self.share_prefix = share_prefix
        self.lora = _is_peft(student)
        self.ref = None  # a full copy (full fine-tuning, not live)
        self.ema_adapters: dict[str, torch.Tensor] | None = None  # LoRA + ema
        self.master: dict[str, torch.Tensor] = {}  # full + ema: float32 EMA of the bf16 / fp16 weights
        if kind == "live":
            return
        if self.lora:
            if kind == "trust_region":
                raise ValueError("trust_region teacher with LoRA is not supported; use ema or frozen")
            if kind == "ema":
                self.ema_adapters = {n: _accumulator(p) for n, p in _adapter_params(student).items()}
        else:
            self.ref = copy.deepcopy(student).eval().requires_grad_(False)
            if kind == "ema":
                self.master = {n: _accumulator(p) for n, p in self.ref.named_parameters() if p.dtype in _LOW_PRECISION}

    @contextlib.contextmanager
    def _weights(self, student):
        """The module that computes the teacher: a copy, or the student with teacher adapters."""
        if self.ref is not None:
            yield self.ref
        elif self.lora and self.kind == "frozen":
            with student.disable_adapter():
                yield student
        elif self.ema_adapters is not None:
            params = _adapter_params(student)
            saved = {n: p.detach().clone() for n, p in params.items()}
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self.ema_adapters[n])
            try:
                yield student
            finally:
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(saved[n])
        else:  # live
            yield student

    @contextlib.contextmanager
    def modules(self, student):
        """The teacher as a linear mix of forwards: yields [(module, weight), ...] whose teacher logits are
        Σ weight · logits(module) (one pair, weight 1, except trust_region: (1−r)·z_ref + r·z_θ).
        A caller that computes log-probs from hidden states chunk by chunk mixes the heads' outputs per chunk."""
        with self._weights(student) as module:
            yield [(module, 1.0 - self.rate), (student, self.rate)] if self.kind == "trust_region" else [(module, 1.0)]

    @torch.no_grad()
    def response_logits(self, student, packed: Packed) -> torch.Tensor:
        """Teacher logits predicting each response token: (N, R, V)."""
        with self._weights(student) as module:
            z = response_logits(module, packed, self.share_prefix)
        if self.kind == "trust_region":
            z = torch.lerp(z, response_logits(student, packed, self.share_prefix), self.rate)  # (1−r)·z_ref + r·z_θ
        return z

    @torch.no_grad()
    def update(self, student) -> None:
        """θ_T ← (1−r)·θ_T + r·θ (ema only)."""
        if self.kind != "ema" or self.rate == 0.0:
            return
        if self.ema_adapters is not None:
            for n, p in _adapter_params(student).items():
                ema = self.ema_adapters[n]
                ema.lerp_(p.detach().to(ema.dtype), self.rate)
            return
        for (n, pt), ps in zip(self.ref.named_parameters(), student.parameters(), strict=True):
            acc = self.master.get(n, pt)
            acc.lerp_(ps.detach().to(acc.dtype), self.rate)
            if acc is not pt:
                pt.copy_(acc)

    def state_dict(self) -> dict:
        if self.ema_adapters is not None:
            return {"ema_adapters": self.ema_adapters}
        if self.ref is not None and self.kind == "ema":
            return {"ref": self.ref.state_dict(), "master": self.master}
        return {}  # frozen / trust_region refs are the initial weights, rebuilt on resume

    def load_state_dict(self, state: dict) -> None:
        if "ema_adapters" in state:
            for n, t in state["ema_adapters"].items():
                self.ema_adapters[n].copy_(t)
        if "ref" in state:
            self.ref.load_state_dict(state["ref"])
            for n, t in self.master.items():  # a checkpoint without it (older, or fp32) restarts it from θ_T
                t.copy_(state.get("master", {}).get(n, dict(self.ref.named_parameters())[n]))
