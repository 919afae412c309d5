"""The teacher's no-grad forwards as a method asks for them (``credit.methods.Scorer``): ℓ of the
response tokens under many contexts in one batched pass, or the logits under one, timed by role."""

from __future__ import annotations

import time

import torch

from credit.scoring import Packed
from credit.signal import token_logprobs


class TeacherScorer:
    """The teacher's no-grad forwards, as a method asks for them (``credit.methods.Scorer``).

    ``seconds`` accumulates forward time by role (teacher context c vs negative contexts c^(k)); the loop
    reports it per step as ``perf/teacher_fwd_s`` and ``perf/negatives_fwd_s``. A batched pass over
    rows ``[c | c^(1) | … | c^(K)]`` attributes each micro-batch's time by its rows.
    """

    def __init__(self, teacher, student, temperature: float, micro_batch: int):
        self.teacher, self.student, self.temperature, self.micro = teacher, student, temperature, micro_batch
        self.seconds = {"teacher": 0.0, "negatives": 0.0}

    def _timed(self, fn, *args):
        if self.student.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        if self.student.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    @torch.no_grad()
    def teacher_logprobs(self, packs: list[Packed]) -> torch.Tensor:
        """ℓ of the response tokens under the teacher for every row of every pack: (P, M, R)."""
        m, r = packs[0].response_ids.shape
        joined = Packed(*(_cat_padded([getattr(p, f) for p in packs], f) for f in Packed.__dataclass_fields__))
        parts = []
        for s in range(0, joined.input_ids.shape[0], self.micro):
            rows = joined.rows(slice(s, s + self.micro))
            dt, z = self._timed(self.teacher.response_logits, self.student, rows)
            share = max(0, min(s + self.micro, m) - s) / rows.input_ids.shape[0]  # rows [0, m) are c's
            self.seconds["teacher"] += share * dt
            self.seconds["negatives"] += (1 - share) * dt
            parts.append(token_logprobs(z, rows.response_ids, self.temperature))
        return torch.cat(parts).view(len(packs), m, r)

    def teacher_logits(self, packed: Packed, role: str = "teacher") -> torch.Tensor:
        dt, z = self._timed(self.teacher.response_logits, self.student, packed)
        self.seconds[role] += dt
        return z

    def pop_seconds(self) -> dict[str, float]:
        out = {f"perf/{k}_fwd_s": v for k, v in self.seconds.items()}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return out


def _cat_padded(tensors: list[torch.Tensor], field: str) -> torch.Tensor:
    """Concatenate packs whose context widths differ: left-pad the (N, C+R) fields to one width."""
    if field in ("response_ids", "response_mask"):
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0)) for t in tensors])
