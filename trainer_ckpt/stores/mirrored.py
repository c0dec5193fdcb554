"""
Checkpoints in object storage (S3, GCS, Azure, any fsspec URL), behind a local store.

The engine writes each checkpoint into the local directory as always (temp file, fsync, rename,
record last), so a local crash is handled as before. `Mirrored.write_record` then uploads every
state file of the checkpoint whole (one object each: an object store has no partial objects), and
the record last. In the bucket, a checkpoint exists when its record does: a crash leaves the old
set, or the old set plus one complete checkpoint, plus state objects without a record. Before
its first state object, an upload writes a hidden marker naming the objects it is about to write
(`.{record}.pending`), and removes it after the record; a deletion writes one before it removes
the record: the next writer removes the objects of a marker whose record is not there, and the
marker. Nothing else in the bucket is ever deleted: only
this layout's own names, of a marker or of a checkpoint retention removes; an object of our
layout's shape that no record or marker vouches for is left alone and reported once at INFO.
Retention deletes the record first, then the state objects. A background save uploads in the
writer thread, from the files written from its snapshot.

Reading starts from the local directory. When it holds no complete checkpoint (a new machine, a
lost disk), every checkpoint in the bucket is downloaded first (state files, then the record), and
verified and loaded as local ones are: a bad one falls back to an older one.

Sharded state (AllenNLP's `_w{rank}` files): each rank uploads its own files and record; a
checkpoint is complete where every rank's files are, so one that a killed rank did not finish
uploading is not taken (tested with two gloo processes, each with its own local directory, as two
nodes sharing a bucket). Objects of interrupted uploads are then left in the bucket (no rank can
tell them from another rank's upload in flight). With separate local disks, a rank sees only its
own files: retention also keeps the checkpoint it downloaded at the start (the newest it saw
complete), and non-primary ranks do not prune their local copies. Not covered: two runs writing
to one bucket prefix (the lock is the local directory's).
"""
import json
import logging
import os
import secrets
from typing import Any, Dict, List, Optional
from trainer_ckpt import stores
from trainer_ckpt.io import durable

logger = logging.getLogger("trainer_ckpt.remote")  # its 0.1 name, which users may filter on
PENDING = ".pending"  # `.{record}.pending`: the objects an upload or deletion in flight touches


def is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def staging_dir(url: str) -> str:
    """Where a face that is given a URL writes locally first: one directory per URL, kept across restarts."""
    import hashlib
    import tempfile

    return os.path.join(tempfile.gettempdir(), "trainer_ckpt-staging", hashlib.sha1(url.encode()).hexdigest()[:16])


def local_place(where: str, key: str, path: Any, storage_options: Any, staging: Optional[str]) -> "tuple[Any, Optional[str]]":
    """
    A face's directory argument `key` = `path`: (the local directory to write into, the URL or
    None). A URL is written into `staging` (a face's `staging_dir`; default one per URL) first.
    """
    url = str(path) if is_url(str(path)) else None
    if url is None and (storage_options is not None or staging is not None):
        raise ValueError(f"{where}: `storage_options` and `staging_dir` are for a URL `{key}`, got {key}={path!r}. "
                         "Give a URL (s3://bucket/run), or remove them.")
    return (path, None) if url is None else (staging or staging_dir(url), url)


def mirrored(local: Any, url: Optional[str], storage_options: Optional[Dict[str, Any]], where: str) -> Any:
    """`local`, or `local` mirrored to `url`, with a clear error when fsspec's protocol package is missing."""
    if url is None:
        return local
    try:
        return Mirrored(local, url, storage_options)
    except (ImportError, ValueError) as e:  # a protocol whose package is missing, or no such protocol
        raise ValueError(f"{where}: {url!r} cannot be opened with fsspec, got {type(e).__name__}: {e}. Install the "
                         "protocol's package (s3fs for s3://), or check the URL.") from e


class Mirrored:
    """A local store whose checkpoints are also kept at `url` (see the module's docstring)."""

    def __init__(self, local: Any, url: str, storage_options: Optional[Dict[str, Any]] = None) -> None:
        import fsspec  # only for remote storage: `pip install fsspec s3fs` (or gcsfs, adlfs)

        self.local, self.url = local, url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.directory = local.directory
        self._cleaned = False

    # The local store's names and reading, as they are: the protocol, spelled out.
    @property
    def sharded(self) -> bool:
        return self.local.sharded

    @property
    def world_size(self) -> int:
        return getattr(self.local, "world_size", 1)

    def files(self, key: Any) -> Dict[str, str]:
        return self.local.files(key)

    def record_path(self, key: Any) -> str:
        return self.local.record_path(key)

    def names(self, key: Any) -> List[str]:
        return self.local.names(key)

    def owns(self, base: str) -> bool:
        return self.local.owns(base)

    def label(self, key: Any) -> str:
        return self.local.label(key)

    def order(self, entry: stores.Entry) -> Any:
        return self.local.order(entry)

    def quarantine(self, key: Any) -> List[str]:
        return self.local.quarantine(key)  # the local files: the bucket's objects are left as they are

    def _remote(self, path: str) -> str:
        return f"{self.root}/{os.path.basename(path)}"

    def _rm(self, path: str, tree: bool = False) -> None:
        """Removes one object (a record, a marker: no listing needed), or with `tree` a state file's
        objects, a directory of sharded state too (listed afresh: a listing cached before another
        writer's change would hide `path`)."""
        try:
            if not tree:
                self.fs.rm_file(path)
                return
            self.fs.invalidate_cache(self.root)
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    # ---- writing -------------------------------------------------------------------------

    def write_record(self, key: Any, record: Dict[str, Any]) -> None:
        self.local.write_record(key, record)
        if not self._cleaned and not self.local.sharded:  # sharded: another rank may be uploading
            self._clean_up_remote()
        # A record of an earlier checkpoint of this key goes first: its objects are about to change.
        record_path = self.local.record_path(key)
        paths = [p for p in self.local.files(key).values() if os.path.exists(p)]
        try:
            self._rm(self._remote(record_path))
            marker = self._marker(os.path.basename(record_path), [os.path.basename(p) for p in paths])
            for path in paths:
                if os.path.isdir(path):  # sharded state (DCP): every rank's part
                    for part in sorted(os.listdir(path)):
                        self.fs.put_file(os.path.join(path, part), f"{self._remote(path)}/{part}")
                else:
                    self.fs.put_file(path, self._remote(path))
            self.fs.put_file(record_path, self._remote(record_path))  # commits it in the bucket
            self._rm(marker)
        except Exception as e:  # the engine's failed-save path: this checkpoint goes, earlier ones stay
            raise OSError(f"uploading to {self.url} failed, got {type(e).__name__}: {e}") from e

    def _marker(self, record: str, names: List[str]) -> str:
        """Writes the marker of a change to checkpoint `record` that touches objects `names` (see the module's docstring)."""
        marker = f"{self.root}/{'' if record.startswith('.') else '.'}{record}{PENDING}"  # hidden, as the record may be
        self.fs.pipe_file(marker, json.dumps(names).encode())
        return marker

    def _record_of(self, name: str) -> Optional[str]:
        """The record a marker's name is of, when it is a marker of this layout's names; else None."""
        if not name.endswith(PENDING) or not name.startswith("."):
            return None
        record = name[:-len(PENDING)]
        for candidate in (record, record[1:]):
            if self.local.owns(candidate):
                return candidate
        return None

    def remove(self, key: Any) -> None:
        names, record = self.local.names(key), os.path.basename(self.local.record_path(key))  # every rank's, the record first
        marker = self._marker(record, [n for n in names if n != record])
        for name in names:
            self._rm(f"{self.root}/{name}", tree=name != record)
        self._rm(marker)
        self.local.remove(key)

    def _clean_up_remote(self) -> None:
        """
        Removes what uploads a killed writer left (the writer does this once): the objects its
        marker names that no record names, if they are this layout's names, then the marker.
        """
        self._cleaned = True
        records, objects = self._remote_records()
        named = {f["name"] for r in records.values() for f in r.get("files", {}).values()}
        vouched = set(named) | set(records)
        for marker in objects:
            record = self._record_of(marker)
            if record is None:
                continue
            try:
                names = json.loads(self.fs.cat_file(f"{self.root}/{marker}"))
            except (OSError, ValueError):
                names = []
            if record not in records:
                for name in names if isinstance(names, list) else []:
                    if isinstance(name, str) and name in objects and name not in named and self.local.owns(name):
                        logger.info("Removing %s/%s: an upload or deletion was interrupted", self.url, name)
                        self._rm(f"{self.root}/{name}", tree=True)
                        vouched.add(name)
            self._rm(f"{self.root}/{marker}")
        unknown = [o for o in objects if o not in vouched and self.local.owns(o)]
        if unknown:
            logger.info(
                "Leaving %s in %s alone: named like this checkpointer's files, but no record or upload marker of "
                "ours names them (a file of someone else's, or an upload of an earlier version interrupted)",
                ", ".join(sorted(unknown)), self.url,
            )

    # ---- reading -------------------------------------------------------------------------

    def _remote_records(self) -> "tuple[Dict[str, Dict[str, Any]], List[str]]":
        """({record name: record}, every object's name) in the bucket."""
        self.fs.invalidate_cache(self.root)
        try:
            objects = [os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return {}, []
        records = {}
        for name in objects:
            if name.endswith(".json"):
                try:
                    record = json.loads(self.fs.cat_file(f"{self.root}/{name}"))
                except (OSError, ValueError):
                    continue
                if isinstance(record, dict) and isinstance(record.get("files"), dict):
                    records[name] = record
        return records, objects

    def list(self, own_only: bool = False) -> stores.Listing:
        listing = self.local.list(own_only)
        if listing.complete:
            return listing
        if self._pull():
            listing = self.local.list(own_only)
        return listing

    def _pull(self) -> int:
        """Downloads every checkpoint of the bucket into the empty local directory; how many."""
        records, objects = self._remote_records()
        present, pulled = set(objects), 0
        os.makedirs(self.directory, exist_ok=True)
        for name, record in sorted(records.items(), key=lambda item: item[1].get("time", 0)):
            files = [f["name"] for f in record["files"].values()]
            if not all(f in present for f in files):
                continue  # its upload was interrupted: not a checkpoint
            parts = {f["name"]: list(f.get("parts", ())) for f in record["files"].values()}
            mtimes = {f["name"]: f["mtime_ns"] for f in record["files"].values() if isinstance(f.get("mtime_ns"), int)}
            for f in files + [name]:  # the record last, as a save writes them
                target = os.path.join(self.directory, f)
                tmp = os.path.join(self.directory, f".{f}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
                if parts.get(f):  # a directory of sharded state: its parts
                    os.makedirs(tmp)
                    for part in parts[f]:
                        self.fs.get_file(f"{self.root}/{f}/{part}", os.path.join(tmp, part))
                    durable.remove_file(target)
                else:
                    self.fs.get_file(f"{self.root}/{f}", tmp)
                    if f in mtimes:  # the copy claims the recorded file's time: its bytes are checked against the record
                        os.utime(tmp, ns=(mtimes[f], mtimes[f]))
                os.replace(tmp, target)
            pulled += 1
            logger.info("Downloaded checkpoint %s from %s", name, self.url)
        if pulled:
            durable.fsync_dir(self.directory)
        return pulled
