"""
Crash-safe file operations, below the stores: every file is written to a hidden temp file in the
same directory (`.{name}.tmp-{pid}-{random}`), flushed, fsynced and renamed over its final name,
and the directory is fsynced, so a crash at any instant leaves the old file or the complete new
one. Deletions of large files are renamed away at once and unlinked on a thread. Uses only the
standard library, torch and `io.fastio`, `io.settings`.
"""
import json
import logging
import os
import re
import secrets
import shutil
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from trainer_ckpt.io import fastio
from trainer_ckpt.io.fastio import ChecksummingWriter, WritebackFile, direct_io, open_direct
from trainer_ckpt.io.settings import without_zip_crc32

logger = logging.getLogger("trainer_ckpt.storage")  # the name users filter on for checkpoint files

def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write, mtime: Optional[float] = None) -> None:
    """
    Calls `write(file)` on a temp file next to `path`, then makes it `path`, so that `path` is
    either its old content or the complete new one. `mtime`, when given, is stamped on the file.
    """
    commit([(write_temp(path, write, mtime), path)])


# Temp files this process is writing and has not committed yet: not stale, though our pid is alive
# (another checkpointer of this process may list the directory while a background save writes).
_IN_FLIGHT: set = set()


def mark_in_flight(path: str) -> None:
    """Marks a temp file (or directory) this process writes as in flight: clean-up leaves it alone until it is committed or removed."""
    _IN_FLIGHT.add(os.path.abspath(path))


def temp_path(path: str) -> str:
    """
    A new hidden temp name next to `path` (`.{name}.tmp-{pid}-{random}`), marked in flight until
    it is committed or removed: clean-up knows the shape, and leaves this process's own alone.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    mark_in_flight(tmp)
    return tmp


def write_temp(path: str, write, mtime: Optional[float] = None, direct: bool = False) -> str:
    """Writes a hidden temp file next to `path` (not yet fsynced; `direct`: with O_DIRECT); removes it if that fails."""
    tmp = temp_path(path)
    try:
        f = open_direct(tmp) if direct else None  # None: no bounce buffers free, or not wanted
        if f is not None:
            try:
                write(f)
            finally:
                f.close()
        else:
            with open(tmp, "wb") as f:
                write(WritebackFile(f))
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
    except BaseException as e:
        remove_file(tmp)
        cause = _os_error_in(e)
        if cause is not None and cause is not e:
            raise cause from e  # torch.save reports a full disk as a RuntimeError about zip offsets
        raise
    return tmp


def commit(renames: List[Tuple[str, str]]) -> None:
    """
    Makes temp files final, in order: each is fsynced first, then renamed over its final name,
    then the directory is fsynced. Fsyncing them all before the first rename lets the disk flush
    one file while the next is being written. On failure every temp file not yet renamed goes.
    """
    try:
        for tmp, _ in renames:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in renames:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # sharded state saved again under the same name: its record is gone
            os.replace(tmp, path)
            _IN_FLIGHT.discard(os.path.abspath(tmp))
    except BaseException:
        for tmp, _ in renames:
            remove_file(tmp)
        raise
    fsync_dir(os.path.dirname(renames[0][1]) or ".")


def _os_error_in(error: BaseException) -> Optional[OSError]:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_save(obj: Any, path: str, mtime: Optional[float] = None) -> Dict[str, Any]:
    """`torch.save`s `obj` with `atomic_write`; returns the file's name, size and CRC32."""
    tmp, info = save_temp(obj, path, mtime)
    commit([(tmp, path)])
    return info


def save_temp(obj: Any, path: str, mtime: Optional[float] = None, **save_kwargs: Any) -> Tuple[str, Dict[str, Any]]:
    written: List[ChecksummingWriter] = []

    def write(f) -> None:
        writer = ChecksummingWriter(f)
        with without_zip_crc32():
            torch.save(obj, writer, **save_kwargs)
        written.append(writer)

    tmp = write_temp(path, write, mtime, direct=direct_io(os.path.dirname(path) or "."))
    # The inode and the mtime survive the rename: a file found later under this name with another
    # inode, a later mtime and other bytes was put there by another writer since (`loading.replaced`).
    stat = os.stat(tmp)
    return tmp, {"name": os.path.basename(path), "size": written[0].size, "crc32": written[0].crc32,
                 "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns}


def move_into_corrupt(directory: str, names: Iterable[str]) -> List[str]:
    """Moves files of `directory` into its `corrupt/`, never overwriting what is there; returns those moved."""
    target = os.path.join(directory, "corrupt")
    os.makedirs(target, exist_ok=True)
    moved = []
    for name in names:
        dest, n = os.path.join(target, name), 1
        while os.path.exists(dest):
            dest, n = os.path.join(target, f"{name}.{n}"), n + 1
        try:
            os.rename(os.path.join(directory, name), dest)
            moved.append(name)
        except FileNotFoundError:
            pass
    fsync_dir(directory)
    return moved


_DCP_PART = re.compile(r"^(\.metadata|__\d+_\d+\.distcp)$")


def is_sharded_leftover(path: str) -> bool:
    """
    Whether `path` is a directory with nothing but DCP's parts in it (`.metadata`,
    `__{rank}_0.distcp`), as a sharded save of ours writes it. Found without its record, it is a
    save or a deletion a crash interrupted, not a peer's checkpoint (Lightning's hold a `meta.pt`).
    """
    try:
        return os.path.isdir(path) and not os.path.islink(path) and all(_DCP_PART.match(n) for n in os.listdir(path))
    except OSError:
        return False


def remove_file(path: str) -> None:
    """Removes a file, or a directory of sharded state."""
    _IN_FLIGHT.discard(os.path.abspath(path))
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


# A state file this large is unlinked on a thread: ext4 frees its blocks inside `unlink`, which
# took 0.4 s for a 512 MiB checkpoint on the VM this was measured on (a quarter of a synchronous
# save that deletes the previous one). It is first renamed to a hidden temp name (instant and
# atomic: the checkpoint is gone at once; a crash leaves a stale temp file, which clean-up removes).
_DISCARD_ON_A_THREAD = 64 << 20


def discard(path: str) -> None:
    """Removes a checkpoint's state file (a large one: renamed now, unlinked on a thread)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return
    if stat.st_size < _DISCARD_ON_A_THREAD or os.path.isdir(path):
        remove_file(path)
        return
    tmp = temp_path(path)
    try:
        os.rename(path, tmp)
    except FileNotFoundError:
        _IN_FLIGHT.discard(os.path.abspath(tmp))
        return
    try:
        fastio.pool("delete").submit(remove_file, tmp)
    except RuntimeError:  # the interpreter is exiting
        remove_file(tmp)


def wait_for_discards() -> None:
    """Waits until the files `discard` handed to its thread are unlinked."""
    fastio.wait_for("delete")


def write_json(path: str, record: Dict[str, Any]) -> None:
    payload = json.dumps(record, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(payload))


def read_json(path: str) -> Dict[str, Any]:
    """A checkpoint's record; {} (with a warning) for one that does not read, or is not shaped as a record."""
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError) as e:
        logger.warning("Ignoring unreadable checkpoint record %s: %s", path, e)
        return {}
    files = record.get("files", {}) if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in files.values()):
        logger.warning("Ignoring checkpoint record %s: not shaped as a record (a JSON object whose `files` map roles "
                       "to {name, size, crc32}), got %.200r", path, record)
        return {}
    return record


def is_stale(path: str, pid: int) -> bool:
    """Whether a temp file's writer is gone."""
    if pid == os.getpid():
        return os.path.abspath(path) not in _IN_FLIGHT  # not ours: an earlier process with our pid
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

