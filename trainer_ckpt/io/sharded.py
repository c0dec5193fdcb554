"""
Sharded state (DTensors: FSDP2 `fully_shard`, tensor parallel) through
torch.distributed.checkpoint (DCP), for every face.

A role whose state holds a DTensor is saved by every rank at once: DCP writes each rank's shard
(`__{rank}_0.distcp`, fsynced) and rank 0 the `.metadata`, into a hidden temp directory next to
the role's file name. Each rank checksums its own part and the sizes and CRC32s are gathered on the
primary, which renames the directory into the role's name and writes the checkpoint's record last,
after every rank's part is durable: a crash at any instant leaves the old set of checkpoints, or the
old set plus one complete new one, on every rank. Reading checks every part against the record, as
for a plain file. Loading fills a template (the live model's and optimizer's state dicts: each rank
reads its own shards, resharding as DCP allows: any world size, or a plain model in one process);
entries the template lacks load as whole tensors. Loading is safe: DCP unpickles its `.metadata`
and non-tensor values with plain `pickle`; here the metadata goes through an unpickler that allows
DCP's own dataclasses only, and values load with `weights_only=True`.

DCP needs one file system every rank sees (a shared or local disk), not separate local disks.
"""
import errno
import io
import os
import pickle
import secrets
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from trainer_ckpt.io import durable
from trainer_ckpt.io.checks import BadCheckpoint, UnsafeCheckpoint, refused_types, verify_file
from trainer_ckpt.io.group import distributed as _distributed, group

DCP_METADATA = ".metadata"


def is_sharded(obj: Any) -> bool:
    """Whether `obj` (a state dict, nested) holds a DTensor."""
    # No DTensor exists before its module is imported, and importing it takes seconds (and 50 MiB):
    # a first save of a plain model would pay for it.
    DTensor = _dtensor_type()
    if DTensor is None:
        return False

    def walk(value: Any) -> bool:
        if isinstance(value, DTensor):
            return True
        if isinstance(value, dict):
            return any(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)) and not scalars_only(value):
            return any(walk(v) for v in value)
        return False

    return walk(obj)


def _dtensor_type() -> Any:
    """DTensor's class when its module is imported (no DTensor exists before), else None."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def local_part(value: Any) -> Optional[torch.Tensor]:
    """A DTensor's local shard (this rank's tensor), or None for anything else."""
    DTensor = _dtensor_type()
    return value.to_local() if DTensor is not None and isinstance(value, DTensor) else None


def with_local(value: Any, local: torch.Tensor) -> Any:
    """DTensor `value`'s twin whose local shard is `local` (a snapshot's buffer): same mesh, placements, global shape."""
    return type(value)(local, value._spec, requires_grad=False)  # as torch's own async_save copies state (_state_dict_utils)


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def temp_dir(path: str) -> str:
    """The hidden temp directory rank 0 names for `path` (a storage temp name: stale when its writer is gone)."""
    directory, name = os.path.split(path)
    choice = [os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")]
    if _distributed():
        dist.broadcast_object_list(choice, src=0, group=group())
    return choice[0]


SCALARS = (int, float, bool, str, bytes, type(None))  # immutable: nothing in them to walk or copy


def scalars_only(sequence: Any) -> bool:
    """Whether a list or tuple holds only immutable scalars: nothing in it to walk or copy."""
    return all(type(value) in SCALARS for value in sequence)


KEYS = "_trainer_ckpt_keys"  # [fqn, kinds, *path] of the entries whose path has a dict key that is not a str


def _typed_paths(obj: Dict[str, Any]) -> Tuple[Dict[str, Tuple[str, tuple]], List[Tuple[str, tuple]]]:
    """
    DCP flattens a state dict into "a.b.0" names, turning every dict key into a str (an
    optimizer's state is keyed by int) and reading ints in its paths as list indices: for the
    paths that had a dict key of another type, their kinds ("d" dict key, "l" list index) and
    keys, to rebuild them on load; and the empty dicts, which DCP drops. Walks as DCP's
    `traverse_state_dict` does.
    """
    found: Dict[str, Tuple[str, tuple]] = {}
    empty: List[Tuple[str, tuple]] = []  # DCP drops empty dicts (an optimizer's state before its first step)

    def terminal(value: Any) -> bool:
        if isinstance(value, dict):
            return False
        return not isinstance(value, list) or all(not isinstance(e, (dict, list)) or terminal(e) for e in value)

    def walk(path: tuple, kinds: str, typed: bool, value: Any) -> None:
        if isinstance(value, dict):
            if not value:
                empty.append((kinds, path))
            for k, v in value.items():
                walk(path + (k,), kinds + "d", typed or not isinstance(k, str), v)
        elif terminal(value):
            if typed:
                found[".".join(map(str, path))] = (kinds, path)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(path + (i,), kinds + "l", typed, v)

    for key, value in obj.items():
        walk((key,), "d", not isinstance(key, str), value)
    return found, empty


def _put(root: Dict[Any, Any], kinds: str, path: tuple, value: Any) -> None:
    """Sets `value` at `path` in nested dicts and lists, making them as needed."""
    node: Any = root
    for i, (kind, key) in enumerate(zip(kinds, path)):
        if kind == "l":
            node.extend([None] * (key + 1 - len(node)))
        if i == len(path) - 1:
            node[key] = value
        elif kind == "l":
            if node[key] is None:
                node[key] = [] if kinds[i + 1] == "l" else {}
            node = node[key]
        else:
            node = node.setdefault(key, [] if kinds[i + 1] == "l" else {})


def _crc(path: str) -> Dict[str, Any]:
    from trainer_ckpt.io.fastio import file_crc

    size, crc = file_crc(path)
    return {"size": size, "crc32": crc}


def save_temp(obj: Any, path: str) -> Tuple[str, Dict[str, Any]]:
    """
    Every rank: writes `obj` with DCP into a temp directory for `path`; returns it and, on the
    primary, the record's entry for it (every rank's part: sizes and CRC32s). Raises OSError on
    every rank when any rank's write failed.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    tmp = temp_dir(path)
    durable.mark_in_flight(tmp)
    typed, empty = _typed_paths(obj)
    if typed or empty:  # one entry (a list of lists is a leaf to DCP): [fqn, kinds, *path] per path, "" for an empty dict
        obj = {**obj, KEYS: [[fqn, kinds, *path] for fqn, (kinds, path) in typed.items()] + [["", kinds, *path] for kinds, path in empty]}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(obj, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True, single_file_per_rank=True),
                     no_dist=not _distributed(), process_group=group())
    except CheckpointException as e:  # a BaseException, raised on every rank when any failed
        causes = [c for c in getattr(e, "failures", {}).values() if isinstance(c, BaseException)]
        number = next((c.errno for c in causes if isinstance(c, OSError)), errno.EIO)
        durable.remove_file(tmp)  # every rank's write is over: the parts written go with it
        raise OSError(number, f"a rank's part of the sharded state could not be written: {e}") from e
    rank = _rank()
    mine = {name: _crc(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))
            if name.startswith(f"__{rank}_") or (rank == 0 and name == DCP_METADATA)}
    parts: List[Dict[str, Any]] = [mine]
    if _distributed():
        parts = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, mine, group=group())
    merged = {name: entry for part in parts for name, entry in part.items()}
    return tmp, {"name": os.path.basename(path), "size": sum(p["size"] for p in merged.values()), "parts": merged}


def verify(path: str, expected: Dict[str, Any]) -> None:
    """Checks every part of a DCP directory against its record; raises BadCheckpoint."""
    if not os.path.isdir(path):
        raise BadCheckpoint(f"{os.path.basename(path)} is missing or not a directory of sharded state")
    for name, part in expected["parts"].items():
        try:
            verify_file(os.path.join(path, name), {**part, "name": name})
        except BadCheckpoint as e:
            raise BadCheckpoint(f"{os.path.basename(path)}/{e}") from e


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's metadata holds its own dataclasses, torch sizes and dtypes: nothing else is built."""

    def find_class(self, module: str, name: str) -> Any:
        import dataclasses
        import enum

        if module.startswith("torch.distributed.checkpoint"):
            found = super().find_class(module, name)
            if dataclasses.is_dataclass(found) or (isinstance(found, type) and issubclass(found, enum.Enum)):
                return found
        elif module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))):
            return getattr(torch, name)
        elif (module, name) in {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                                ("torch.serialization", "_get_layout"),  # a layout by its name
                                ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath")}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which is not allowed to load")


def _reader(path: str) -> Any:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(os.path.join(path, DCP_METADATA), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def load(path: str, template: Optional[Dict[str, Any]] = None, collective: bool = False) -> Dict[str, Any]:
    """
    Loads a DCP directory into `template` (its tensors and DTensors are filled in place; each
    rank reads its own shards) and returns the state, entries the template lacks read as whole
    tensors. `collective`: every rank calls this at once (a template with DTensors needs it).
    Raises UnsafeCheckpoint for a type `weights_only` refuses, BadCheckpoint
    when the directory does not load.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # Into the dict given (the planner's own may be a copy of it).
            self.original_state_dict[read_item.dest_index.fqn] = torch.load(value, weights_only=True)

    reader = _reader(path)
    try:
        metadata = reader.read_metadata()
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(f"{os.path.basename(path)}/{DCP_METADATA}: {e}") from e
    except Exception as e:
        raise BadCheckpoint(f"{os.path.basename(path)}/{DCP_METADATA} does not load: {type(e).__name__}: {e}") from e
    flat, mapping = flatten_state_dict(template or {})
    # What the checkpoint lacks is left to the face's `load_state_dict` to report, as with a plain
    # file: a checkpoint that does not fit the model is not a bad checkpoint.
    flat = {fqn: value for fqn, value in flat.items() if fqn in metadata.state_dict_metadata}
    for fqn, meta in metadata.state_dict_metadata.items():
        if fqn not in flat:
            whole = isinstance(meta, TensorStorageMetadata)
            flat[fqn] = torch.empty(meta.size, dtype=meta.properties.dtype) if whole else None
            mapping[fqn] = (metadata.planner_data or {}).get(fqn, (fqn,))
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(flat, storage_reader=reader, planner=SafePlanner(flatten_state_dict=False, flatten_sharded_tensors=False),
                     no_dist=not (collective and _distributed()),
                     process_group=group() if collective else None)
    except BaseException as e:  # CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        refused = refused_types(e)
        if refused is not None:
            raise UnsafeCheckpoint(f"{os.path.basename(path)}: {refused}") from e
        raise BadCheckpoint(f"{os.path.basename(path)} does not load: {type(e).__name__}: {str(e)[:500]}") from e
    rows = flat.pop(KEYS, None) or []
    typed = {row[0]: (row[1], tuple(row[2:])) for row in rows if row[0]}
    state: Dict[Any, Any] = {}
    for fqn, value in flat.items():
        path = mapping[fqn]
        _put(state, *typed.get(fqn, ("".join("l" if isinstance(p, int) else "d" for p in path), path)), value)
    for row in rows:
        if not row[0]:
            _put(state, row[1], tuple(row[2:]), {})
    return state


def init_optimizer_state(optimizer: Any) -> None:
    """
    Makes an optimizer's state (Adam's moments) exist before the first step, as DCP's own
    `get_optimizer_state_dict` does: a step with zero gradients and a zero learning rate, so that
    its state dict is a template for loading.
    """
    if optimizer.state or any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.requires_grad:
                param.grad = torch.zeros_like(param)
    rates = [group.get("lr") for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        if "lr" in group:
            group["lr"] = torch.tensor(0.0) if isinstance(group["lr"], torch.Tensor) else 0.0
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates):
        if rate is not None:
            group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)


def template(obj: Any) -> Any:
    """A template for loading `obj`'s state (its `state_dict()`; an optimizer's with its state made first)."""
    if isinstance(obj, torch.optim.Optimizer):
        init_optimizer_state(obj)
    return obj.state_dict()
