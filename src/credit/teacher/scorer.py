"""The teacher's no-grad forwards as a method asks for them (``credit.methods.Scorer``): ℓ of the
response tokens under many contexts in one batched pass, or log-probs at given ids under one, timed by
role. Both come from the teacher's hidden states chunk by chunk (``credit.signal.head_logprobs``):
the teacher never builds (N, R, V) logits either, except for a full-vocabulary support."""

from __future__ import annotations

import time

import torch

from credit import signal
from credit.scoring import Packed, response_hidden


class TeacherScorer:
    """The teacher's no-grad forwards, as a method asks for them (``credit.methods.Scorer``).

    The teacher is ``teacher.modules(student)``: modules whose logits, mixed with their weights, are
    the teacher's; each runs once for its hidden states, and the heads are mixed chunk by chunk.
    ``seconds`` accumulates forward time by role (teacher context c vs negative contexts c^(k)); the loop
    reports it per step as ``perf/teacher_fwd_s`` and ``perf/negatives_fwd_s``. A batched pass over
    rows ``[c | c^(1) | … | c^(K)]`` attributes each micro-batch's time by its rows.
    """

    def __init__(self, teacher, student, temperature: float, micro_batch: int,
                 chunk_bytes: int = signal.DEFAULT_CHUNK_BYTES):
        self.teacher, self.student, self.temperature, self.micro = teacher, student, temperature, micro_batch
        self.chunk_bytes = chunk_bytes
        self.seconds = {"teacher": 0.0, "negatives": 0.0}

    def _timed(self, fn, *args):
        cuda = self.student.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    def _logprobs(self, packed: Packed, index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's log-probs at ``index`` (M, R, K), or over the vocabulary (M, R, V) when None."""
        with self.teacher.modules(self.student) as modules:
            mix = [(response_hidden(module, packed, self.teacher.share_prefix), w) for module, w in modules]
            if index is None:
                return signal.head_full_logprobs(mix, self.temperature)
            return signal.head_logprobs(mix, index, self.temperature, self.chunk_bytes)

    @torch.no_grad()
    def teacher_logprobs(self, packs: list[Packed]) -> torch.Tensor:
        """ℓ of the response tokens under the teacher for every row of every pack: (P, M, R)."""
        m, r = packs[0].response_ids.shape
        joined = Packed(*(_cat_padded([getattr(p, f) for p in packs], f) for f in Packed.__dataclass_fields__))
        parts = []
        for s in range(0, joined.input_ids.shape[0], self.micro):
            rows = joined.rows(slice(s, s + self.micro))
            dt, logp = self._timed(self._logprobs, rows, rows.response_ids.unsqueeze(-1))
            share = max(0, min(s + self.micro, m) - s) / rows.input_ids.shape[0]  # rows [0, m) are c's
            self.seconds["teacher"] += share * dt
            self.seconds["negatives"] += (1 - share) * dt
            parts.append(logp.squeeze(-1))
        return torch.cat(parts).view(len(packs), m, r)

    @torch.no_grad()
    def teacher_logprobs_at(self, packed: Packed, index: torch.Tensor | None, role: str = "teacher") -> torch.Tensor:
        """The teacher's log-probs at the ids ``index`` (M, R, K) -> (M, R, K); ``None``: the whole
        vocabulary, (M, R, V). ``role``: "teacher" (c) or "negatives" (c^(k)), for the timers."""
        dt, logp = self._timed(self._logprobs, packed, index)
        self.seconds[role] += dt
        return logp

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
