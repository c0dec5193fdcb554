"""
What checkpointing needs from torch.distributed, for every face: one decision for all ranks, on
a process group of its own.

A clock-based save policy would decide at different batches on different ranks (their clocks and
speeds differ): a sharded checkpoint would never complete, and ranks that gather state for the
primary would wait on each other. So the primary decides and every rank follows: one broadcast of
one byte per call, and only when the policy reads the clock (progress-based policies decide alike
on every rank without talking). `scripts/bench_collective.py` measures its cost.

Every checkpoint collective (these decisions, a preemption's agreement, a sharded commit, DCP's
planning) runs on `group()`, the checkpoint's own gloo group with its own timeout (`io.group`).
"""
from typing import Any, Sequence

import torch
import torch.distributed as dist

from trainer_ckpt.io.group import group

__all__ = ["group", "largest", "primary_decides", "rank", "should_save", "world_size"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def primary_decides(decision: bool) -> bool:
    """Rank 0's `decision`, on every rank (a collective: every rank must call it, in the same order)."""
    flag = torch.tensor([1 if decision else 0], dtype=torch.uint8)
    dist.broadcast(flag, src=0, group=group())
    return bool(flag.item())


def largest(value: int) -> int:
    """The largest of every rank's `value` (a collective, as `primary_decides`)."""
    number = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(number, op=dist.ReduceOp.MAX, group=group())
    return int(number.item())


def should_save(policy: Any, current: Any, previous: Sequence[Any]) -> bool:
    """`policy.should_save(current, previous)`, the primary's answer when the policy reads the clock in a distributed run."""
    decision = policy.should_save(current, previous)
    if getattr(policy, "depends_on_clock", False) and world_size() > 1:
        return primary_decides(decision)
    return decision
