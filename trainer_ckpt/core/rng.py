"""
Every random generator's state (python, numpy, torch, every CUDA device), captured in types that
load with `weights_only=True` and put back: what makes a resume bit-exact in every face.
"""
import random
from typing import Any, Dict

import numpy
import torch


def capture_rng(cuda: bool = True) -> Dict[str, Any]:
    """Every generator's state, in types that load with `weights_only=True` (`cuda=False`: the CPU's only, as in a data-loader worker)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = numpy.random.get_state()
    state: Dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(numpy.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def own_part(state: Dict[str, Any]) -> Dict[str, Any]:
    """This rank's part of a checkpoint's random state: a sharded checkpoint's holds every rank's (rank 0's under another world size)."""
    if "per_rank" not in state:  # engine.PER_RANK
        return state
    from trainer_ckpt.core.distributed import rank

    ranks = state["per_rank"]
    return ranks[rank()] if rank() < len(ranks) else ranks[0]


def restore_rng(state: Dict[str, Any]) -> None:
    """Puts back a random state of `capture_rng` (this rank's part of it: `own_part`)."""
    state = own_part(state)
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    numpy.random.set_state((n["name"], n["keys"].numpy().astype(numpy.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, device_state in enumerate(state["cuda"][:torch.cuda.device_count()]):  # each device's own
            torch.cuda.set_rng_state(device_state, device)
