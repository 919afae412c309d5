"""The teacher's weights (teacher/weights.py, docs/method.md §1.4) on tiny models: each kind against its
formula, computed independently; the LoRA adapter swap leaves the student untouched; state dicts
restore the teacher exactly.

Tolerances: where the teacher and the reference run the same computation the check is bit equality;
where a formula is evaluated differently (lerp vs. (1−r)·a + r·b) the reference is float64 and the
bound is a few ulps of the operands' magnitude in the teacher's dtype."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from credit.models import tiny_model
from credit.scoring import pack, response_logits
from credit.teacher.weights import LoraFrozenTeacher, build_teacher

RATE = 0.1


@pytest.fixture(scope="module")
def packed(tiny_tokenizer):
    """Three (context, response) rows; two share a context (the prefix-sharing path runs too)."""
    tok = tiny_tokenizer
    ctx = [tok.encode("What is 2 + 3?"), tok.encode("What is 2 + 3?"), tok.encode("Name a colour.")]
    resp = [tok.encode(" 5"), tok.encode(" It is five."), tok.encode(" Blue")]
    return pack(ctx, resp, tok.pad_token_id)


def _model(tok, dtype="float32", seed=0):
    return tiny_model(tok, seed=seed, dtype=dtype).eval()


def _frozen_copy(model):
    """A copy computed as the teacher computes its own copy: ``requires_grad`` off changes which
    kernels run (measured: the last context position differs by 1 ulp otherwise), so a reference
    for a bit-equality check must have it off too."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def _perturb(model, seed: int, scale: float = 0.05, only_trainable: bool = False) -> None:
    """A stand-in for an optimizer step: every (trainable) weight moves by a seeded random amount."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad or not only_trainable:
            p.add_((torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def _assert_identical(model, snapshot) -> None:
    now = model.state_dict()
    assert now.keys() == snapshot.keys()
    changed = [n for n in snapshot if not torch.equal(now[n], snapshot[n])]
    assert changed == [], changed


def _ulp_bound(dtype: torch.dtype, *tensors: torch.Tensor, ulps: float = 4.0) -> torch.Tensor:
    """Elementwise: ``ulps`` units of ``dtype``'s machine epsilon times the largest operand."""
    mag = torch.stack([t.double().abs() for t in tensors]).amax(0)
    return ulps * torch.finfo(dtype).eps * mag


# -- full fine-tuning ---------------------------------------------------------------------------------


def test_ema_update_is_the_formula(tiny_tokenizer):
    student = _model(tiny_tokenizer)
    teacher = build_teacher("ema", RATE, student)
    before = {n: p.detach().double().clone() for n, p in teacher.ref.named_parameters()}
    for step in range(3):  # θ_T ← (1−r)·θ_T + r·θ, three times with a different θ each
        _perturb(student, seed=step)
        teacher.update(student)
        theta = dict(student.named_parameters())
        for n, pt in teacher.ref.named_parameters():
            expected = (1 - RATE) * before[n] + RATE * theta[n].detach().double()
            err = (pt.double() - expected).abs()
            assert bool((err <= _ulp_bound(torch.float32, before[n], theta[n])).all()), (n, err.max())
            before[n] = pt.detach().double().clone()
    # ... and the teacher moved (a formula check on a teacher that never moves would pass too)
    assert not torch.equal(teacher.ref.model.embed_tokens.weight, _model(tiny_tokenizer).model.embed_tokens.weight)


def test_ema_teacher_logits_are_those_of_its_weights(tiny_tokenizer, packed):
    student = _model(tiny_tokenizer)
    teacher = build_teacher("ema", RATE, student)
    _perturb(student, seed=1)
    teacher.update(student)
    twin = copy.deepcopy(teacher.ref)  # the same weights, the same computation: bit equality
    with torch.no_grad():
        assert torch.equal(teacher.response_logits(student, packed), response_logits(twin, packed))
        assert not torch.equal(teacher.response_logits(student, packed), response_logits(student, packed))


def test_frozen_teacher_keeps_the_initial_weights(tiny_tokenizer, packed):
    student = _model(tiny_tokenizer)
    initial = _frozen_copy(student)
    teacher = build_teacher("frozen", RATE, student)  # a rate given to frozen is ignored
    _perturb(student, seed=2)
    teacher.update(student)
    with torch.no_grad():
        assert torch.equal(teacher.response_logits(student, packed), response_logits(initial, packed))
        assert not torch.equal(response_logits(student, packed), response_logits(initial, packed))


def test_live_teacher_is_the_student(tiny_tokenizer, packed):
    student = _model(tiny_tokenizer)
    teacher = build_teacher("live", RATE, student)
    assert not hasattr(teacher, "ref") and teacher.state_dict() == {}  # no copy kept
    _perturb(student, seed=3)
    with torch.no_grad():
        assert torch.equal(teacher.response_logits(student, packed), response_logits(student, packed))


def test_trust_region_logits_are_the_mixture(tiny_tokenizer, packed):
    # float64 model: the mixture is compared with (1−r)·z_ref + r·z_θ written out, to a few ulps
    student = _model(tiny_tokenizer, dtype="float64")
    initial = _frozen_copy(student)
    teacher = build_teacher("trust_region", RATE, student)
    _perturb(student, seed=4)
    teacher.update(student)  # a no-op for trust_region: z_ref stays the initial model's
    with torch.no_grad():
        z_ref, z_theta = response_logits(initial, packed), response_logits(student, packed)
        got = teacher.response_logits(student, packed)
    expected = (1 - RATE) * z_ref + RATE * z_theta
    assert bool(((got - expected).abs() <= _ulp_bound(torch.float64, z_ref, z_theta)).all())
    assert (z_ref - z_theta).abs().max() > 1e-3  # the two ends differ, so the mixture is a real check


def test_bf16_ema_accumulates_in_float32(tiny_tokenizer):
    """A constant student 1.5 % away from θ_T, r = 0.05: each step is 7.7e-4 relative, under bf16's
    half ulp (2^-9 ≈ 2e-3). In bf16 arithmetic θ_T would never move; accumulated in float32 it
    follows θ_T + (1 − (1−r)^n)·(θ − θ_T), rounded to bf16 once."""
    rate, steps = 0.05, 20
    student = _model(tiny_tokenizer, dtype="bfloat16")
    teacher = build_teacher("ema", rate, student)
    start = {n: p.detach().double().clone() for n, p in teacher.ref.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1 + 2**-6)  # exact in bf16 for most values; whatever it rounds to is θ
    for _ in range(steps):
        teacher.update(student)
    frac = 1 - (1 - rate) ** steps  # ≈ 0.64
    for n, ps in student.named_parameters():
        pt = dict(teacher.ref.named_parameters())[n]
        expected = start[n] + frac * (ps.detach().double() - start[n])
        err = (pt.double() - expected).abs()
        # float32 accumulation error is negligible; the bound is one bf16 rounding of the result
        assert bool((err <= torch.finfo(torch.bfloat16).eps * expected.abs() + 1e-30).all()), (n, err.max())
    moved = [n for n, p in teacher.ref.named_parameters() if not torch.equal(p.double(), start[n])]
    assert moved, "the bf16 EMA teacher never moved"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ema_state_dict_round_trip(tiny_tokenizer, packed, dtype):
    student = _model(tiny_tokenizer, dtype=dtype)
    initial = copy.deepcopy(student)
    teacher = build_teacher("ema", RATE, student)
    for step in range(2):
        _perturb(student, seed=10 + step)
        teacher.update(student)
    buf = io.BytesIO()
    torch.save(teacher.state_dict(), buf)  # as a checkpoint does
    buf.seek(0)
    resumed = build_teacher("ema", RATE, copy.deepcopy(initial))  # a resume builds θ_T from the initial model
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    _assert_identical(resumed.ref, teacher.ref.state_dict())
    # the accumulator too: the next update lands on the same weights
    _perturb(student, seed=20)
    teacher.update(student)
    resumed.update(student)
    _assert_identical(resumed.ref, teacher.ref.state_dict())
    with torch.no_grad():
        assert torch.equal(resumed.response_logits(student, packed), teacher.response_logits(student, packed))


# -- LoRA -----------------------------------------------------------------------------------------------


def _lora(tok, seed=0):
    """A peft LoRA model whose adapters are random (peft starts B at 0, where adapters change nothing),
    and the base model it wraps, kept apart."""
    peft = pytest.importorskip("peft")
    base = _model(tok)
    reference_base = _frozen_copy(base)  # peft freezes the base weights the same way
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    _perturb(model, seed=seed, scale=0.2, only_trainable=True)
    return model.eval(), reference_base


def _adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_ema_teacher_leaves_the_student_bit_identical(tiny_tokenizer, packed):
    student, _ = _lora(tiny_tokenizer)
    teacher = build_teacher("ema", RATE, student)
    _perturb(student, seed=5, scale=0.2, only_trainable=True)  # the student's adapters move on
    teacher.update(student)
    before = _snapshot(student)
    with torch.no_grad():
        z_student = response_logits(student, packed)
        z_teacher = teacher.response_logits(student, packed)
    _assert_identical(student, before)  # adapters and base weights: a skipped restore fails here
    with torch.no_grad():
        assert torch.equal(response_logits(student, packed), z_student)
    assert not torch.equal(z_teacher, z_student)  # the teacher pass did run other adapters


def test_lora_ema_teacher_is_the_student_with_ema_adapters(tiny_tokenizer, packed):
    student, _ = _lora(tiny_tokenizer)
    start = {n: t.double() for n, t in _adapters(student).items()}
    teacher = build_teacher("ema", RATE, student)
    _perturb(student, seed=6, scale=0.2, only_trainable=True)
    teacher.update(student)
    now = _adapters(student)
    for n, ema in teacher.ema_adapters(student).items():  # θ_T ← (1−r)·θ_T + r·θ over the adapters only
        expected = (1 - RATE) * start[n] + RATE * now[n].double()
        assert bool(((ema.double() - expected).abs() <= _ulp_bound(torch.float32, start[n], now[n])).all()), n
    twin = copy.deepcopy(student)  # the student with the EMA adapters written in: the same computation
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if p.requires_grad:
                p.copy_(teacher.ema_adapters(student)[n])
        assert torch.equal(teacher.response_logits(student, packed), response_logits(twin, packed))


def test_lora_ema_restores_the_student_when_the_teacher_pass_fails(tiny_tokenizer, packed):
    student, _ = _lora(tiny_tokenizer)
    teacher = build_teacher("ema", RATE, student)
    _perturb(student, seed=7, scale=0.2, only_trainable=True)
    teacher.update(student)
    before = _snapshot(student)
    broken = copy.deepcopy(packed)
    broken.response_ids.fill_(10**9)
    broken.input_ids.fill_(10**9)  # out of the vocabulary: the embedding raises mid-pass
    with pytest.raises((IndexError, RuntimeError)):
        teacher.response_logits(student, broken)
    _assert_identical(student, before)


def test_lora_frozen_teacher_is_the_base_model(tiny_tokenizer, packed):
    student, base = _lora(tiny_tokenizer)
    teacher = build_teacher("frozen", RATE, student)
    assert isinstance(teacher, LoraFrozenTeacher) and not hasattr(teacher, "ref")  # no copy under LoRA
    before = _snapshot(student)
    with torch.no_grad():
        z_teacher = teacher.response_logits(student, packed)
        assert torch.equal(z_teacher, response_logits(base, packed))  # adapters off = the base model
        assert not torch.equal(z_teacher, response_logits(student, packed))
    _assert_identical(student, before)


def test_lora_ema_state_dict_round_trip(tiny_tokenizer, packed):
    """The EMA adapter is part of the student's own state dict: a resume that loads the student's
    state into a fresh student with a fresh teacher has the same teacher."""
    student, _ = _lora(tiny_tokenizer)
    initial = copy.deepcopy(student)
    teacher = build_teacher("ema", RATE, student)
    _perturb(student, seed=8, scale=0.2, only_trainable=True)
    teacher.update(student)
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    buf.seek(0)
    resumed = build_teacher("ema", RATE, initial)
    initial.load_state_dict(torch.load(buf, weights_only=True))
    ema, ema_resumed = teacher.ema_adapters(student), resumed.ema_adapters(initial)
    assert ema.keys() == ema_resumed.keys() and len(ema) > 0
    assert all(torch.equal(ema_resumed[n], t) for n, t in ema.items())
    with torch.no_grad():
        assert torch.equal(resumed.response_logits(initial, packed), teacher.response_logits(student, packed))


def test_lora_ema_teacher_pass_keeps_the_students_graph(tiny_tokenizer, packed):
    """Logit mode runs the teacher between the student's forward and its backward: the teacher pass
    must not write any weight the student's graph saved (the old in-place adapter swap failed here)."""
    student, _ = _lora(tiny_tokenizer)
    teacher = build_teacher("ema", RATE, student)
    _perturb(student, seed=9, scale=0.2, only_trainable=True)
    teacher.update(student)
    student.train()
    z = response_logits(student, packed)
    z_teacher = teacher.response_logits(student, packed)
    (z - z_teacher).pow(2).mean().backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    frozen = [n for n, p in student.named_parameters() if "credit_ema" in n]
    assert frozen and all(p.grad is None for n, p in student.named_parameters() if "credit_ema" in n)


def test_lora_trust_region_is_refused(tiny_tokenizer):
    student, _ = _lora(tiny_tokenizer)
    with pytest.raises(ValueError, match="trust_region teacher with LoRA"):
        build_teacher("trust_region", RATE, student)
