"""Several processes: data parallel (DDP, through accelerate) or sharded (PyTorch's own FSDP2).

``parallel: fsdp`` shards the student (and a full-weight teacher copy) with
``torch.distributed.fsdp.fully_shard``, per decoder layer and then the root, as torchtitan does. It is
PyTorch's, not accelerate's FSDP plugin, because that plugin refuses CPU processes: the same code runs
on GPUs (NCCL) and in the tests on CPU processes (gloo). The loop never asks whether a model is
sharded; it calls the few functions here, which are no-ops for an unsharded model:

- ``gathered(*modules)``: the full weights for a block of no-grad forwards (a rollout, an evaluation,
  the teacher's passes). Inside, forwards run no collective at all, so a rank whose responses end
  first can leave its decode loop while the others go on (no per-token all-gather, no hang).
  Entering and leaving are the collectives, and every rank enters each block once.
- ``save_shards`` / ``load_shards``: a training checkpoint, each rank writing and reading only its own
  shards (``torch.distributed.checkpoint``): no process ever holds the whole state.
- ``full_state_dict``: the whole weights gathered to rank 0 (``final/``, ``checkpoint-best.pt``).
- ``reduce_metrics``: a step's metrics combined over ranks (one collective per step); ``all_rows``:
  every rank's rows of a few small tensors, for numbers that must be the whole batch's (``signal/*``).

Collectives time out (``dist_timeout_s``, the process group's timeout): a rank that enters a
collective the others never reach fails with an error naming the stage (``stage``), not a hang.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: modules whose class a transformers model names in
    ``_no_split_modules`` (LlamaDecoderLayer, Qwen3DecoderLayer, ...), found under a peft wrapper too."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"parallel=fsdp: {type(model).__name__} names no decoder layer class (_no_split_modules); "
                         "it cannot be sharded per layer; use parallel=ddp")
    return layers


def shard(model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``fully_shard`` per decoder layer, then the root (embeddings, final norm, head). Parameters stay in
    their own dtype (fp32 masters) and are gathered in ``compute_dtype`` (bf16 under mixed precision);
    gradients are reduced in fp32. In place; returns the model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy, reshard_after_forward=True)
        layer._credit_reshard = True
    # the root (embeddings, final norm, head) stays gathered from its forward to its backward: log-probs are
    # computed from the decoder's hidden states and the head's weight outside the model's forward
    # (credit.scoring.response_hidden), where that weight must be the whole one; backward reshards it
    fully_shard(model, mp_policy=policy, reshard_after_forward=False)
    model._credit_reshard = False
    # gradients are summed over ranks, not averaged: each rank's loss is already its share of the global
    # mean (global denominators). FSDP2's own averaging for a world size that is no power of two lost
    # float64 down to ~1e-7 relative (3 gloo ranks, measured), summing is exact. A plain SUM on the wire: for
    # float32 / bf16 gradients FSDP2 would send a divide factor as ReduceOp.PREMUL_SUM(1/1), which gloo refuses
    for unit in _units(model):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def _units(module: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: torch.nn.Module) -> bool:
    return bool(_units(module))


_held: set[int] = set()  # id() of the FSDP units a ``gathered`` block holds now


@contextlib.contextmanager
def gathered(*modules: torch.nn.Module) -> Iterator[None]:
    """Every FSDP unit of ``modules`` unsharded for the block, and kept so across its forwards (no
    reshard after each, hence no collective inside the block). Re-entrant: an inner block over a
    module an outer block holds does nothing. A no-op for unsharded modules."""
    # a unit that is whole already is held by a forward whose backward has not run (the student's root
    # between its forward and backward, while logit mode runs a LoRA or live teacher): leave it as it is
    units = [u for m in modules for u in _units(m) if id(u) not in _held and not _is_whole(u)]
    for u in units:
        _held.add(id(u))
        u.unshard()
        u.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for u in units:
            u.set_reshard_after_forward(getattr(u, "_credit_reshard", True), recurse=False)
            u.reshard()
            _held.discard(id(u))


def _is_whole(unit) -> bool:
    group = unit._get_fsdp_state()._fsdp_param_group
    return group is not None and group.is_unsharded


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter; the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t):
    """The whole value of a DTensor (a collective); anything else as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on CPU: on rank 0 when sharded (empty elsewhere; every rank must
    call it), the plain ``state_dict`` otherwise."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _shard_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 others: dict[str, torch.nn.Module]) -> dict:
    """This rank's shards (DTensors) of the student, AdamW's state and ``others`` (a teacher's copy)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    return {"model": weights, "optimizer": optim, **{k: get_model_state_dict(m) for k, m in others.items()}}


def save_shards(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                others: dict[str, torch.nn.Module]) -> None:
    """Every rank writes its own shards into the folder ``path`` (``torch.distributed.checkpoint``; files
    flushed to disk). A collective: every rank calls it."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_shard_state(model, optimizer, others), storage_writer=dcp.FileSystemWriter(path, sync_files=True))


def load_shards(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                others: dict[str, torch.nn.Module]) -> None:
    """``save_shards``'s inverse: every rank reads only its own shards. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _shard_state(model, optimizer, others)
    dcp.load(state, storage_reader=dcp.FileSystemReader(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    for k, m in others.items():
        set_model_state_dict(m, state[k])


def all_rows(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Every rank's rows of each (N_r, ...) tensor, in rank order: (Σ N_r, ...) on every rank, a second
    dimension zero-padded to the widest rank's. A tensor that some ranks lack (None) stands as zeros of
    their rows, as a single process holds zeros on rows nothing scored; None where every rank lacks it.
    The first tensor is never None: it gives each rank's row count. One collective; every rank calls it
    (small tensors only: they travel pickled, through the CPU)."""
    if world_size() == 1:
        return list(tensors)
    parts: list[list[torch.Tensor | None]] = [[] for _ in range(world_size())]
    dist.all_gather_object(parts, [None if t is None else t.detach().cpu() for t in tensors])
    rows, device = [p[0].shape[0] for p in parts], tensors[0].device
    out = []
    for pieces in zip(*parts):
        like = next((t for t in pieces if t is not None), None)
        if like is None:
            out.append(None)
            continue
        width = max(t.shape[1] for t in pieces if t is not None) if like.dim() > 1 else None
        whole = []
        for n, t in zip(rows, pieces):
            if t is None:
                t = like.new_zeros((n, *like.shape[1:]))
            if width is not None:
                t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]))
            whole.append(t)
        out.append(torch.cat(whole).to(device))
    return out


def _reduction(key: str):
    """How one metric combines over ranks: maxima stay maxima, counts and throughputs add up, the rest
    is the mean (exact for per-rollout fractions, as every rank holds as many rollouts; a number computed
    on ``all_rows`` is the same on every rank)."""
    if key.endswith("_max") or key in MAXED:
        return max
    if key in SUMMED or key.endswith("tokens_per_s"):
        return sum
    return lambda values: sum(values) / len(values)


SUMMED = {"rollout/samples"}
# whether any rank contrasted, and the negatives per contrasted sample (the same K on every rank that has
# one; a rank without a teacher signal reports 0)
MAXED = {"credit/contrast_possible", "credit/negatives_per_sample"}


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A step's metrics combined over the ranks that report each (one collective; every rank calls it)."""
    if world_size() == 1:
        return metrics
    parts: list[dict[str, float]] = [{} for _ in range(world_size())]
    dist.all_gather_object(parts, metrics)
    keys = list(dict.fromkeys(k for p in parts for k in p))
    return {k: _reduction(k)([p[k] for p in parts if k in p]) for k in keys}


class CollectiveError(RuntimeError):
    """A collective failed or timed out: the ranks disagreed on what to run (a bug), or one died."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage in the error when a collective inside it times out or fails on another rank."""
    try:
        yield
    except CollectiveError:
        raise
    except (RuntimeError, dist.DistError) as e:
        if world_size() == 1 or not _collective_failure(e):
            raise
        rank = dist.get_rank()
        raise CollectiveError(f"rank {rank}: a collective failed during {name} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]}); the ranks ran different collectives "
                              "or another rank died: see the other ranks' errors") from e


def _collective_failure(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("timed out", "timeout", "connection closed", "connection reset", "gloo",
                                   "nccl", "peer", "disterror", "broken pipe"))
