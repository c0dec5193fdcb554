"""
Process-wide torch settings that saves and loads of ours change for their duration: torch's
per-entry zip CRC32 (off while a save of ours runs) and the `weights_only` safe-globals list
(types allowed while a load of ours runs). Each is changed by the first save or load in flight and
put back by the last, under one lock, so that threads never undo each other's setting.
"""
import contextlib
import re
import threading
from typing import Any, Dict, Iterable, Iterator, List

import torch

MIN_TORCH = (2, 6)  # set_crc32_options, add_safe_globals with (type, name), torch.distributed.tensor
_found = re.match(r"(\d+)\.(\d+)", torch.__version__)
if _found is None or tuple(map(int, _found.groups())) < MIN_TORCH:
    raise ImportError(
        f"trainer_ckpt: needs torch>={MIN_TORCH[0]}.{MIN_TORCH[1]} (its serialization settings and safe globals), "
        f"got torch {torch.__version__}. Upgrade torch: pip install 'torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}'."
    )

# Process-wide torch settings that saves and loads change for their duration: changed by the
# first of them in flight, put back by the last, under one lock, so that saves and loads of
# several threads never undo each other's setting (see `without_zip_crc32`, `allowing`).
_SETTINGS_LOCK = threading.Lock()
_ZIP_CRC32 = {"saves": 0, "previous": True}


@contextlib.contextmanager
def without_zip_crc32() -> Iterator[None]:
    """
    torch.save without its per-entry zip CRC32 (the record holds a CRC32 of the whole file,
    computed on the way; torch's would be a second pass over every byte, about a fifth of the
    save). torch reads the setting when a save starts; it is off while any save of ours is in
    flight, and the user's value is back once none is (a torch.save of the user's own on another
    thread meanwhile writes no per-entry CRC32: torch.load loads such files as any other).
    """
    with _SETTINGS_LOCK:
        if _ZIP_CRC32["saves"] == 0:
            _ZIP_CRC32["previous"] = torch.serialization.get_crc32_options()
            torch.serialization.set_crc32_options(False)
        _ZIP_CRC32["saves"] += 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            _ZIP_CRC32["saves"] -= 1
            if _ZIP_CRC32["saves"] == 0:
                torch.serialization.set_crc32_options(_ZIP_CRC32["previous"])


_ALLOWED: Dict[Any, int] = {}  # type -> loads in flight that allow it; only types we added are here


@contextlib.contextmanager
def allowing(types: Iterable[Any]) -> Iterator[None]:
    """
    Lets `weights_only` loading accept `types` within. Unlike `torch.serialization.safe_globals`,
    which on exit also drops types the user had allowed for the whole process, it takes back only
    what it added, and only when no other load in flight (another thread) still allows it.
    """
    types = list(dict.fromkeys(types))
    with _SETTINGS_LOCK:
        present = set(torch.serialization.get_safe_globals())
        mine = [t for t in types if t in _ALLOWED or t not in present]
        torch.serialization.add_safe_globals([t for t in mine if t not in present])
        for t in mine:
            _ALLOWED[t] = _ALLOWED.get(t, 0) + 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            done = []
            for t in mine:
                _ALLOWED[t] -= 1
                if not _ALLOWED[t]:
                    del _ALLOWED[t]
                    done.append(t)
            if done:
                _disallow(done)


def _disallow(types: List[Any]) -> None:
    """Takes `types` off torch's list in one step (torch swaps its set), so that a load on another thread never sees a list without the rest."""
    remove = getattr(torch.serialization, "_weights_only_unpickler", None)
    remove = getattr(remove, "_remove_safe_globals", None)
    if remove is not None:
        remove(types)
        return
    now = [t for t in torch.serialization.get_safe_globals() if t not in types]  # an older torch
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(now)


