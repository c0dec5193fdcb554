"""
One-file-per-checkpoint layouts as a store (fvcore's, ignite's, mmengine's): a `Layout` is data
plus functions (how a checkpoint's files are named, how a basename parses back), one definition
per layout, used by the face and the command line alike.
"""
import os
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from trainer_ckpt.io import durable
from trainer_ckpt.stores.base import RNG, Entry, Listing, entry_info

class Layout(NamedTuple):
    """
    How a one-file-per-checkpoint face names its files (fvcore, ignite, mmengine): data plus
    functions. `files(name)` -> {role: basename} of the state files, the main one first;
    `record(name)` -> the record's basename; `parse(basename)` -> the checkpoint name when
    `basename` is a main state file of this layout, else None.
    """

    files: Callable[[str], Dict[str, str]]
    record: Callable[[str], str]
    parse: Callable[[str], Optional[str]]
    pointers: Tuple[str, ...] = ()  # the face's other files beside its checkpoints (`last_checkpoint`): their temps are ours too


MAIN = "checkpoint"  # the role of a one-file layout's state file


def one_file(extensions: Tuple[str, ...], prefix: str = "", named_with_extension: bool = True,
             pointers: Tuple[str, ...] = ()) -> Layout:
    """
    A checkpoint per file, `{prefix}...{extension}`, with its record (`.{file}.json`) and random
    state (`.{file}.rng`) hidden beside it; a checkpoint's name is its file name, or without the
    extension (`named_with_extension=False`, as fvcore names them).
    """

    def file(name: str) -> str:
        return name if named_with_extension else name + extensions[0]

    def parse(base: str) -> Optional[str]:
        if base.startswith(".") or not base.startswith(prefix) or not base.endswith(extensions):
            return None
        return base if named_with_extension else base[:base.rindex(".")]

    return Layout(files=lambda name: {MAIN: file(name), RNG: f".{file(name)}.rng"},
                  record=lambda name: f".{file(name)}.json", parse=parse, pointers=pointers)


# Every one-file layout, for the faces and the command line alike.
FVCORE = one_file((".pth",), named_with_extension=False, pointers=("last_checkpoint",))  # model_0000999 -> model_0000999.pth
MMENGINE = one_file((".pth",), pointers=("last_checkpoint",))  # epoch_3.pth, iter_2000.pth, best_acc_epoch_3.pth
IGNITE = one_file((".pt",))  # checkpoint_12.pt, best_model_3_acc=0.9.pt (`ignite_layout` for one prefix)
ANY_ONE_FILE = one_file((".pth", ".pt", ".ckpt"))  # the command line, on any of them (.ckpt: Lightning's)


def ignite_layout(filename_prefix: str = "") -> Layout:
    """ignite's files of one `Checkpoint(filename_prefix=...)`: `{prefix}_...pt`."""
    return one_file((".pt",), f"{filename_prefix}_" if filename_prefix else "")


_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")  # what `durable.temp_path` names a temp file of `name`


def owned_by(layout: Layout, base: str) -> bool:
    """Whether `base` is one of `layout`'s file names: a main file, or a hidden file (record, RNG) of one."""
    if layout.parse(base) is not None:
        return True
    if base.startswith("."):
        name = layout.parse(base[1:].rsplit(".", 1)[0])  # `.model_0000009.pth.json` -> `model_0000009`
        return name is not None and (base == layout.record(name) or base in layout.files(name).values())
    return False


class NamedFiles:
    """
    A `Layout`'s checkpoints as the engine's store: keys are names, ordered by save time (the
    record's, else the main file's mtime), then name. A file a peer wrote (no record) is a
    checkpoint; one of ours is complete when every file its record lists is there.
    """

    sharded = False

    def __init__(self, directory: str, layout: Layout) -> None:
        self.directory, self.layout = directory, layout

    def list(self, own_only: bool = False) -> Listing:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return Listing([], [], [], [])
        present = set(names)
        complete, incomplete, stale = [], [], []
        for base in names:
            name = self.layout.parse(base)
            if name is None:
                temp = _TEMP.match(base)
                if (temp is not None and (owned_by(self.layout, temp["name"]) or temp["name"] in ("direct-probe", *self.layout.pointers))
                        and durable.is_stale(os.path.join(self.directory, base), int(temp["pid"]))):
                    stale.append(os.path.join(self.directory, base))
                continue
            has_record = self.layout.record(name) in present
            if not has_record and durable.is_sharded_leftover(os.path.join(self.directory, base)):
                incomplete.append(name)  # our sharded state without its record: a crash mid-save or mid-deletion
                continue
            record = durable.read_json(self.record_path(name)) if has_record else {}
            expected = record.get("files", {})
            if any(f["name"] not in present for f in expected.values()):
                incomplete.append(name)  # lost a file its record lists
                continue
            paths = {role: os.path.join(self.directory, b) for role, b in self.layout.files(name).items() if b in present}
            try:
                stat = os.stat(os.path.join(self.directory, base))
            except FileNotFoundError:
                continue  # deleted or moved since `listdir` (another rank's quarantine, retention)
            size = sum(f["size"] for f in expected.values()) if expected else stat.st_size
            progress = (record.get("epochs_completed", 0), record.get("batches_in_epoch_completed", 0))
            complete.append(Entry(name, name, paths, record, entry_info(progress, record.get("time", stat.st_mtime), size, record)))
        return Listing(sorted(complete, key=self.order), incomplete, stale, [])

    def entry(self, key: str) -> Entry:
        """
        Checkpoint `key` whether it is listed or not (a file a user names): its record when it has
        one, and its state files (the main one, and the others its record lists or that are there).
        """
        has_record = os.path.exists(self.record_path(key))
        record = durable.read_json(self.record_path(key)) if has_record else {}
        expected = record.get("files", {})
        paths = {role: path for role, path in self.files(key).items()
                 if role == MAIN or role in expected or os.path.exists(path)}
        progress = (record.get("epochs_completed", 0), record.get("batches_in_epoch_completed", 0))
        size = sum(f["size"] for f in expected.values())
        return Entry(key, key, paths, record, entry_info(progress, record.get("time", 0.0), size, record))

    def files(self, key: str) -> Dict[str, str]:
        return {role: os.path.join(self.directory, b) for role, b in self.layout.files(key).items()}

    def record_path(self, key: str) -> str:
        return os.path.join(self.directory, self.layout.record(key))

    def write_record(self, key: str, record: Dict[str, Any]) -> None:
        durable.write_json(self.record_path(key), record)

    def remove(self, key: str) -> None:
        durable.remove_file(self.record_path(key))  # the record first: complete files left still load
        for path in self.files(key).values():
            durable.discard(path)

    def quarantine(self, key: str) -> List[str]:
        return durable.move_into_corrupt(self.directory, self.names(key))

    def names(self, key: str) -> List[str]:
        """A checkpoint's file names, the record first."""
        return [self.layout.record(key)] + list(self.layout.files(key).values())

    def label(self, key: str) -> str:
        return key

    def owns(self, base: str) -> bool:
        """Whether `base` is one of this layout's file names: what a store may ever delete."""
        return owned_by(self.layout, base)

    @staticmethod
    def order(entry: Entry) -> Any:
        return entry.info.time, entry.key


