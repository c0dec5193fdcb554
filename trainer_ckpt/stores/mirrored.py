"""
Checkpoints in object storage (S3, GCS, Azure, any fsspec URL), behind a local store.

The engine writes each checkpoint into the local directory as always (temp file, fsync, rename,
record last), so a local crash is handled as before. `Mirrored.write_record` then queues its
upload, and returns: one uploader thread per Mirrored runs the queued uploads and deletions in
order, off the thread that commits (the training loop, for synchronous saves). An upload puts every
state file of the checkpoint whole (one object each: an object store has no partial objects), and
the record last. In the bucket, a checkpoint exists when its record does: a crash leaves the old
set, or the old set plus one complete checkpoint, plus state objects without a record. Before
its first state object, an upload writes a hidden marker naming the objects it is about to write
(`.{record}.pending`), and removes it after the record; a deletion writes one before it removes
the record: the next writer removes the objects of a marker whose record is not there, and the
marker. Nothing else in the bucket is ever deleted: only
this layout's own names, of a marker or of a checkpoint retention removes, and this layout's lock;
an object of our layout's shape that no record or marker vouches for is left alone and reported
once at INFO. Retention deletes the record first, then the state objects.

Order: retention's `remove(key)` is queued behind the uploads, so a checkpoint's objects and its
local files go only once every newer checkpoint queued before is in the bucket with its record; a
kill at any moment leaves the bucket with a complete checkpoint, the newest uploaded. A failed
upload is retried (`attempts`, with doubling `backoff` seconds between), then raised on the
training thread as an `UploadError` (the engine's `check`, `wait`, `drain`, `close` call `settle`);
the deletions queued after it do not run until an upload succeeds again (more is kept, never less).
At most two uploads wait or run: a third save waits for the
oldest (saves faster than the link would fill the local disk with checkpoints to upload).
A checkpoint saved again under the same key before its upload ran is uploaded once, by the later
save's upload. `close()` (the engine's) waits for the queue, as does the process's exit. A listing
leaves out the checkpoints whose deletion is queued (the engine lists on every save of sharded
state: waiting there would put the uploads back on the training loop).

One run per prefix: the writing engine calls `acquire` once it holds the local directory's lock.
It writes `.trainer_ckpt.lock` under the prefix (host, pid, local directory, a random token, start
time, lease expiry; a conditional write on S3: If-None-Match to create, If-Match to replace; then
read back, which is all other stores get) and a thread renews the lease every `lease / 3` seconds.
A second run that finds a live lease waits, reading the lock: renewed, its holder is alive and
this run is refused, with the holder named; expired (its run died: a job requeued on another
machine after a kill), it is taken over. An expired lease found at once is taken over too; so is the lease of the same host and local directory at once: this process
holds that directory's lock, so the process that wrote the lease is gone (a restart after kill -9).
`release` (the engine's close, or the process's exit) deletes the lock if it is still ours. A
second store of this process on the URL (a new checkpointer in a notebook or a test) takes the lock
over from the first once the first's queued uploads ran, and a download from the bucket waits for
this process's uploads to it.

Reading starts from the local directory. When it holds no complete checkpoint (a new machine, a
lost disk), every checkpoint in the bucket is downloaded first (state files, then the record), and
verified and loaded as local ones are: a bad one falls back to an older one.

Sharded state (AllenNLP's `_w{rank}` files): each rank uploads its own files and record; a
checkpoint is complete where every rank's files are, so one that a killed rank did not finish
uploading is not taken (tested with two gloo processes, each with its own local directory, as two
nodes sharing a bucket). Objects of interrupted uploads are then left in the bucket (no rank can
tell them from another rank's upload in flight). With separate local disks, a rank sees only its
own files: retention also keeps the checkpoint it downloaded at the start (the newest it saw
complete), and non-primary ranks do not prune their local copies. The prefix's lock is the
primary's.
"""
import atexit
import collections
import json
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple
from trainer_ckpt import stores
from trainer_ckpt.io import durable

logger = logging.getLogger("trainer_ckpt.remote")  # its 0.1 name, which users may filter on
PENDING = ".pending"  # `.{record}.pending`: the objects an upload or deletion in flight touches
QUEUED_UPLOADS = 2  # a save waits while this many uploads are queued or running
LOCK = ".trainer_ckpt.lock"  # the prefix's lock: one run writes under a prefix
# Stores with uploads queued or a prefix's lock held: settled and released when the process exits.
_ACTIVE: "weakref.WeakSet[Mirrored]" = weakref.WeakSet()


class UploadError(OSError):
    """An upload (or deletion) in the bucket failed after its retries; the local checkpoints are intact, and so are the bucket's earlier ones."""


class PrefixLocked(RuntimeError):
    """Another run holds the bucket prefix's lock (or took it over from this one)."""


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

    def __init__(
        self, local: Any, url: str, storage_options: Optional[Dict[str, Any]] = None, *, attempts: int = 3,
        backoff: float = 1.0, lease: float = 60.0, clock: Optional[Callable[[], float]] = None,
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        """
        `attempts` per upload, `backoff` seconds before the second (doubling after), a lock's
        `lease` in seconds (renewed every lease / 3); `clock` (wall time: leases are compared across
        hosts) and `sleep` are time.time and time.sleep unless a test gives its own.
        """
        import fsspec  # only for remote storage: `pip install fsspec s3fs` (or gcsfs, adlfs)

        where = "trainer_ckpt.stores.Mirrored"
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"{where}: `attempts` must be an int >= 1, got {attempts!r}. Use e.g. attempts=3.")
        for name, value in (("backoff", backoff), ("lease", lease)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (name == "lease" and not value):
                raise ValueError(f"{where}: `{name}` must be a number of seconds (> 0 for lease), got {value!r}. "
                                 f"Use e.g. {name}={1.0 if name == 'backoff' else 60.0}.")
        self.local, self.url = local, url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        _register_at_exit()  # after the file system's own exit hooks (s3fs closes its session in one): ours run first
        self.directory = local.directory
        self.attempts, self.backoff, self.lease = attempts, float(backoff), float(lease)
        self.clock, self.sleep = clock or time.time, sleep or time.sleep
        self.where = "trainer_ckpt"  # the face's name, once the engine acquires the lock
        self._cleaned = False
        # The uploader: jobs run in order on one thread, started when there is work.
        self._jobs: Deque[Callable[[], None]] = collections.deque()
        self._changed = threading.Condition()
        self._uploader: Optional[threading.Thread] = None
        self._uploads = 0  # queued or running
        self._removing: Set[Any] = set()  # keys whose deletion is queued: listings leave them out
        self._failed: Optional[Exception] = None  # raised once, by the next `settle`
        self._intact = True  # the last upload succeeded: queued deletions may run
        # The prefix's lock: what we wrote, and the thread renewing it.
        self._held: Optional[Dict[str, Any]] = None
        self._renewer: Optional[Tuple[threading.Thread, threading.Event]] = None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._conditional = "s3" in protocols  # If-None-Match / If-Match writes (s3fs); else write, then read back

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
        """Commits checkpoint `key` locally, and queues its upload."""
        self.local.write_record(key, record)
        stamp, label = self._stamp(key), self.local.label(key)
        with self._changed:  # saves faster than the link: wait here, rather than fill the disk with checkpoints to upload
            while self._uploads >= QUEUED_UPLOADS:
                self._changed.wait()
            self._uploads += 1
        self._queue(lambda: self._attempt(f"uploading checkpoint {label} to {self.url}", lambda: self._upload(key, stamp), upload=True))

    def _stamp(self, key: Any) -> Optional[bytes]:
        """The local record's bytes (None without one): a job queued for `key` runs only if they are unchanged."""
        try:
            with open(self.local.record_path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _upload(self, key: Any, stamp: Optional[bytes]) -> bool:
        """Uploads checkpoint `key`'s files whole, then its record, on the uploader thread; whether it did."""
        if not self._cleaned and not self.local.sharded:  # sharded: another rank may be uploading
            self._clean_up_remote()
        if self._stamp(key) != stamp:
            return False  # saved again (or gone) since: the later save's upload puts it
        # A record of an earlier checkpoint of this key goes first: its objects are about to change.
        record_path = self.local.record_path(key)
        paths = [p for p in self.local.files(key).values() if os.path.exists(p)]
        self._rm(self._remote(record_path))
        marker = self._marker(os.path.basename(record_path), [os.path.basename(p) for p in paths])
        for path in paths:
            if os.path.isdir(path):  # sharded state (DCP): every rank's part
                for part in sorted(os.listdir(path)):
                    self.fs.put_file(os.path.join(path, part), f"{self._remote(path)}/{part}")
            else:
                self.fs.put_file(path, self._remote(path))
        if self._stamp(key) != stamp:
            return False  # saved again while these went up: the later upload replaces them, record last
        self.fs.put_file(record_path, self._remote(record_path))  # commits it in the bucket
        self._rm(marker)
        return True

    # ---- the uploader --------------------------------------------------------------------

    def _queue(self, job: Callable[[], None]) -> None:
        with self._changed:
            self._jobs.append(job)
            if self._uploader is None:
                self._uploader = threading.Thread(target=self._run, name=f"trainer_ckpt uploads to {self.url}", daemon=True)
                self._uploader.start()
        _ACTIVE.add(self)

    def _run(self) -> None:
        """Runs the queued jobs in order; ends when the queue is empty (the next job starts a new thread)."""
        while True:
            with self._changed:
                if not self._jobs:
                    self._uploader = None
                    return
                job = self._jobs[0]
            try:
                job()
            except Exception:  # each job says its own errors: this is a bug of ours, the queue goes on
                logger.exception("%s: a job for %s failed", self.where, self.url)
            finally:
                with self._changed:
                    self._jobs.popleft()  # only now: `settle` waits for the job running too
                    self._changed.notify_all()

    def _attempt(self, what: str, job: Callable[[], Any], upload: bool = False) -> None:
        """Runs `job` up to `attempts` times with backoff; the last failure is kept for `settle` to raise."""
        try:
            self._try(what, job, upload)
        finally:
            if upload:
                with self._changed:
                    self._uploads -= 1
                    self._changed.notify_all()

    def _try(self, what: str, job: Callable[[], Any], upload: bool) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                uploaded = job()
                break
            except Exception as e:
                error = e
                if attempt < self.attempts:
                    delay = self.backoff * 2 ** (attempt - 1)
                    logger.warning("%s: %s failed (attempt %d of %d), got %s: %s; retrying in %.3g s",
                                   self.where, what, attempt, self.attempts, type(e).__name__, e, delay)
                    self.sleep(delay)
        else:
            failed = UploadError(
                f"{self.where}: {what} failed {self.attempts} times, got {type(error).__name__}: {error}. "
                f"The checkpoints in {self.directory} are intact, and the bucket keeps its earlier ones. Check the "
                "bucket, the network and storage_options (endpoint, credentials); the next save uploads as usual."
            )
            failed.__cause__ = error
            with self._changed:
                self._failed = self._failed or failed
            if upload:
                self._intact = False
            return
        if upload and uploaded:  # a skipped upload (saved again since) leaves the verdict to the later one
            self._intact = True

    def settle(self, wait: bool) -> None:
        """With `wait`, blocks until every queued upload and deletion ran; then raises a failure since the last call, once."""
        if wait:
            self._wait_idle()
        with self._changed:
            failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

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

    def _wait_idle(self) -> None:
        with self._changed:
            while self._jobs:
                self._changed.wait()

    def _siblings(self) -> "List[Mirrored]":
        """This process's other stores on this URL with uploads queued or the lock held."""
        return [m for m in list(_ACTIVE) if m is not self and m.url == self.url]

    def remove(self, key: Any) -> None:
        """Queues the deletion of checkpoint `key`, here and in the bucket, behind the uploads queued before."""
        stamp, label = self._stamp(key), self.local.label(key)
        with self._changed:
            self._removing.add(key)
        self._queue(lambda: self._delete(key, stamp, label))

    def _delete(self, key: Any, stamp: Optional[bytes], label: str) -> None:
        try:
            if not self._intact:
                logger.warning("%s: keeping checkpoint %s in %s and in %s: the upload of a newer one failed",
                               self.where, label, self.directory, self.url)
            elif self._stamp(key) == stamp:  # else saved again since: not the checkpoint retention judged
                self._attempt(f"deleting checkpoint {label} from {self.url}", lambda: self._remove_now(key))
        finally:
            with self._changed:
                self._removing.discard(key)

    def _remove_now(self, key: Any) -> None:
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
        """The local listing (filled from the bucket when it has no complete checkpoint), without the checkpoints whose deletion is queued."""
        listing = self.local.list(own_only)
        if not listing.complete and self._pull():
            listing = self.local.list(own_only)
        with self._changed:
            removing = set(self._removing)
        if not removing:
            return listing
        return stores.Listing([e for e in listing.complete if e.key not in removing],
                              [k for k in listing.incomplete if k not in removing], listing.stale_temps,
                              [k for k in listing.orphan_records if k not in removing])

    def _pull(self) -> int:
        """Downloads every checkpoint of the bucket into the empty local directory; how many."""
        for sibling in self._siblings():  # this process's uploads to the URL first (a new machine in a test, a notebook)
            sibling._wait_idle()
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

    # ---- the prefix's lock ---------------------------------------------------------------

    def acquire(self, where: str) -> None:
        """
        Takes the prefix's lock for this run (the engine calls it once it holds the local
        directory's lock), or raises PrefixLocked naming the run whose lease is live.
        """
        self.where = where
        held, etag = self._read_lock()
        if held is not None and (held.get("host"), held.get("pid")) == (socket.gethostname(), os.getpid()):
            for sibling in self._siblings():  # this process's earlier store on the URL: its uploads, then its lock
                sibling._wait_idle()
                sibling.release()
            held, etag = self._read_lock()
        if held is not None and not self._may_take(held):
            held, etag = self._wait_out(held)
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "directory": os.path.realpath(self.directory),
                "token": secrets.token_hex(16), "started": self.clock()}
        try:
            self._write_lock(mine, etag, create=held is None)
        except OSError as e:  # a condition failed: another run wrote it first (read back below), or the bucket did
            failure: Optional[OSError] = e
        else:
            failure = None
        now, _ = self._read_lock()
        if now is None or now.get("token") != mine["token"]:
            if now is None and failure is not None:
                raise failure
            raise PrefixLocked(self._in_use(now or {}))
        self._held = mine
        stop = threading.Event()
        self._renewer = (threading.Thread(target=self._renew_every, args=(stop,), name=f"trainer_ckpt lease on {self.url}",
                                          daemon=True), stop)
        self._renewer[0].start()
        _ACTIVE.add(self)

    def _wait_out(self, held: Dict[str, Any]) -> "tuple[Optional[Dict[str, Any]], Optional[str]]":
        """
        Another run's lease is live: a run on a new machine resuming one that was killed (a
        requeued job) finds it so. Waits, reading the lock every lease / 6 seconds, until the
        holder renews it (it is alive: PrefixLocked) or its lease expires (it is gone: the lock
        and its ETag are returned, to be taken over).
        """
        logger.warning("%s: %s is locked by another run (%s), with %.0f s left on its lease: waiting for it to renew the "
                       "lease (that run is alive: this one stops) or to let it expire (that run is gone: this one takes "
                       "the prefix over)", self.where, self.url, self._holder(held), held["expires"] - self.clock())
        while True:
            self.sleep(min(max(held["expires"] - self.clock(), 0.0), self.lease / 6) + 0.01)
            now, etag = self._read_lock()
            if now != held and now is not None:
                raise PrefixLocked(self._in_use(now))  # renewed, or taken by a third run: alive
            if now is None or self._may_take(now):
                return now, etag

    def _may_take(self, held: Dict[str, Any]) -> bool:
        """Whether the lock `held` may be taken over: its lease expired, or it is this host's and directory's (its writer is dead)."""
        expires = held.get("expires")
        if (held.get("host"), held.get("pid")) == (socket.gethostname(), os.getpid()):
            return True  # written by a store of this process that is gone
        if not isinstance(expires, (int, float)) or expires <= self.clock():
            logger.info("%s: taking over the lock on %s: its lease expired (%s)", self.where, self.url, self._holder(held))
            return True
        if held.get("host") == socket.gethostname() and held.get("directory") == os.path.realpath(self.directory):
            logger.info("%s: taking over the lock on %s from this directory's previous run (%s): this process holds the "
                        "directory's lock, so that run is gone", self.where, self.url, self._holder(held))
            return True
        return False

    @staticmethod
    def _holder(held: Dict[str, Any]) -> str:
        return f"host {held.get('host')}, pid {held.get('pid')}, directory {held.get('directory')}"

    def _in_use(self, held: Dict[str, Any]) -> str:
        expires = held.get("expires")
        left = f"{expires - self.clock():.0f} s" if isinstance(expires, (int, float)) else "an unknown time"
        return (f"{self.where}: {self.url} is in use by another run, got its lock held by {self._holder(held)}, with "
                f"{left} left on its lease (renewed while it runs). Stop that run or wait for it to end, give this "
                f"run another URL, or restart it on that host from that directory (it takes the lock over at once); "
                f"a run that died leaves a lease that expires within {self.lease:.0f} s, which a new run waits out.")

    def _lock_path(self) -> str:
        return f"{self.root}/{LOCK}"

    def _read_lock(self) -> "tuple[Optional[Dict[str, Any]], Optional[str]]":
        """(the lock's content, {} when unreadable; its ETag where the store has conditional writes), or (None, None)."""
        path = self._lock_path()
        self.fs.invalidate_cache(path)
        try:
            etag = self.fs.info(path).get("ETag") if self._conditional else None
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None, None
        try:
            held = json.loads(data)
        except ValueError:
            held = {}
        return (held if isinstance(held, dict) else {}), etag

    def _write_lock(self, content: Dict[str, Any], etag: Optional[str], create: bool = False) -> None:
        """Writes the lock with a fresh lease: on S3 only if it is still absent (`create`) or the version `etag`."""
        data = json.dumps({**content, "expires": self.clock() + self.lease}).encode()
        condition = ({"mode": "create"} if create else {"IfMatch": etag}) if self._conditional else {}
        self.fs.pipe_file(self._lock_path(), data, **condition)

    def _renew_every(self, stop: threading.Event) -> None:
        """The lease's renewals, every lease / 3 seconds, until `release`."""
        while not stop.wait(self.lease / 3):
            try:
                if not self._renew():
                    return
            except Exception as e:  # the lease has two more chances before it expires
                logger.warning("%s: could not renew the lock on %s, got %s: %s; trying again in %.0f s",
                               self.where, self.url, type(e).__name__, e, self.lease / 3)

    def _renew(self) -> bool:
        """Renews the lease if the lock is still ours; else records that another run took the prefix (once), and returns False."""
        held, etag = self._read_lock()
        mine = self._held
        if mine is None:
            return False
        if held is not None and held.get("token") == mine["token"]:
            self._write_lock(mine, etag)
            return True
        holder = "deleted (not by this run)" if held is None else f"held by {self._holder(held)}"
        lost = PrefixLocked(f"{self.where}: lost the lock on {self.url}, got it {holder}: its lease expired while this "
                            "run could not renew it (network, or a stalled process), or someone removed it. Stop any "
                            "other run writing under this prefix, then restart this one.")
        with self._changed:
            self._failed = self._failed or lost
        self._held = None
        return False

    def release(self) -> None:
        """Stops renewing, and deletes the prefix's lock if it is still ours (the engine's close, or the process's exit)."""
        if self._renewer is not None:
            thread, stop = self._renewer
            stop.set()
            thread.join(timeout=self.lease / 3)  # a renewal in flight: its call's own timeout, or the lease's, bounds it
            self._renewer = None
        mine, self._held = self._held, None
        if mine is None:
            return
        try:
            held, etag = self._read_lock()
            if held is None or held.get("token") != mine["token"]:
                return
            if self._conditional:  # only the version we read: not a lock another run wrote since
                bucket, key, _ = self.fs.split_path(self._lock_path())
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
                self.fs.invalidate_cache(self._lock_path())
            else:
                self.fs.rm_file(self._lock_path())
        except Exception as e:  # OSError, or the client's own (no connection)
            logger.warning("%s: could not remove the lock on %s, got %s: %s; its lease expires within %.0f s",
                           self.where, self.url, type(e).__name__, e, self.lease)


_AT_EXIT: List[bool] = []


def _register_at_exit() -> None:
    """Registers `_settle_at_exit` once, after the first file system was made: exit hooks run last
    registered first, so ours runs while the file system's client can still talk to the bucket."""
    if not _AT_EXIT:
        _AT_EXIT.append(True)
        atexit.register(_settle_at_exit)


# A forked child (a data-loader worker) has copies of these without their threads: its exit is not the run's.
os.register_at_fork(after_in_child=_ACTIVE.clear)


def _settle_at_exit() -> None:
    """A run that ends without closing its engine: its queued uploads finish, and its lock goes."""
    for mirror in list(_ACTIVE):
        try:
            mirror.settle(wait=True)
        except Exception as e:
            logger.error("%s", e)
        mirror.release()
