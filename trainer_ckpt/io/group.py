"""
The process group every checkpoint collective runs on: a gloo group of its own, made once per
default group, with its own timeout (`TRAINER_CKPT_COLLECTIVE_TIMEOUT` seconds, default 1800).

A slow save (a large sharded commit, a slow disk) then waits on this group's clock, never on the
training group's: NCCL's watchdog kills a job whose collective waits past the training group's
timeout. Nothing of a checkpoint is ever enqueued on the training group's streams either. Used by
`sharded` (the commit, DCP's planning) and by `core.distributed` (the decisions of every rank).

A background save of sharded state runs its collectives on a worker thread while the training
thread may be deciding the next save: two threads must never share one group (each rank would
enqueue the two threads' collectives in its own order), so the worker's run on a second group,
`group("writes")`, made by the training thread at the save and handed to the worker with `use`.
"""
import contextvars
import datetime
import os
from typing import Any, Dict, Optional, Tuple

import torch.distributed as dist

TIMEOUT_VARIABLE = "TRAINER_CKPT_COLLECTIVE_TIMEOUT"
_GROUPS: Dict[Tuple[int, str], Tuple[Any, Any]] = {}  # (id(default group), use) -> (that group, kept so its id is not reused; ours)
_CURRENT: "contextvars.ContextVar[Optional[Any]]" = contextvars.ContextVar("trainer_ckpt_group", default=None)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def timeout() -> datetime.timedelta:
    """The checkpoint group's timeout, from `TRAINER_CKPT_COLLECTIVE_TIMEOUT` (seconds)."""
    value = os.environ.get(TIMEOUT_VARIABLE, "1800")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"trainer_ckpt: {TIMEOUT_VARIABLE} must be a positive number of seconds, got {value!r}. "
                         "Set it to e.g. 1800, or unset it.")
    return datetime.timedelta(seconds=seconds)


def group(purpose: str = "decisions") -> Optional[Any]:
    """
    The checkpoint collectives' gloo group for `purpose` ("decisions": the training thread's; "writes":
    a background save's), or the one `use` set; None outside a distributed run. Made at its
    first use, which every rank reaches in the same order (making a group is itself a collective
    of the default group).
    """
    if not distributed():
        return None
    current = _CURRENT.get()
    if current is not None and purpose == "decisions":
        return current
    default = dist.group.WORLD
    made = _GROUPS.get((id(default), purpose))
    if made is None or made[0] is not default:
        made = _GROUPS[(id(default), purpose)] = (default, dist.new_group(backend="gloo", timeout=timeout()))
    return made[1]


def use(chosen: Optional[Any]) -> None:
    """Makes `group()` answer `chosen` in the current context (a copied one, that runs a background save)."""
    _CURRENT.set(chosen)
