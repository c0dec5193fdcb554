"""
Fast file I/O for checkpoints, below `durable` and `loading`: a writer that checksums what passes
through it (the CRC of large chunks on a helper thread, while the chunk is written), O_DIRECT
writes through aligned bounce buffers each file leases from a bounded pool, and reads that
checksum a large file as two halves at once.
"""
import concurrent.futures
import logging
import os
import secrets
import threading
from typing import Dict, List, Optional, Tuple

logger = logging.getLogger("trainer_ckpt.storage")  # what users filter on: checkpoint files

try:  # ISA-L's CRC32: the same checksum as zlib's, about 4x as fast here (8.6 against 2.1 GB/s)
    from isal.isal_zlib import crc32
except ImportError:  # an optional accelerator: zlib's
    from zlib import crc32

_POOLS: Dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """
    One worker thread per job kind ("crc", "io", "read", "delete"), made at first use; joined at
    interpreter exit. Jobs carry all their state (no job reads another's buffers), so saves of
    several threads may queue on one worker; no job waits on another pool's job.
    """
    with _POOLS_LOCK:
        if name not in _POOLS:
            _POOLS[name] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"trainer_ckpt-{name}")
        return _POOLS[name]


def wait_for(name: str) -> None:
    """Waits until the jobs queued on pool `name` so far are done (nothing to wait for if it was never made)."""
    with _POOLS_LOCK:
        executor = _POOLS.get(name)
    if executor is not None:
        executor.submit(lambda: None).result()


class ChecksummingWriter:
    """
    Passes writes through, computing the size and CRC32 of what was written on the way. A large
    chunk's CRC is computed on another thread while the chunk is written (both release the GIL),
    and before `write` returns, so the caller may reuse its buffer.
    """

    def __init__(self, f) -> None:
        self.f, self.size, self.crc32 = f, 0, 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        crc = None
        if n >= 1 << 20:
            try:
                crc = pool("crc").submit(crc32, data, self.crc32)
            except RuntimeError:  # the interpreter is exiting (a background save finishing)
                crc = None
        if crc is not None:
            written = self.f.write(data)
            self.crc32 = crc.result()
        else:
            self.crc32 = crc32(data, self.crc32)
            written = self.f.write(data)
        self.size += n
        return written

    def flush(self) -> None:
        self.f.flush()


# ---- buffered writes, flushed as they go ----------------------------------------------------
#
# A buffered write only fills the page cache; the fsync at the end then writes it all out, after
# the serialization. Asking the kernel to start writing each 16 MiB as soon as it is written
# (sync_file_range(SYNC_FILE_RANGE_WRITE): it starts the write-back and returns) overlaps the two,
# so the fsync finds little left to do. The file and its fsync are unchanged: this only starts
# early what the fsync would do.

_WRITEBACK_CHUNK = 16 << 20


def _sync_file_range():
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range  # Linux
    except (AttributeError, OSError, ImportError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_START_WRITEBACK = _sync_file_range()


class WritebackFile:
    """A buffered file whose bytes start going to the disk every 16 MiB, while the rest is written."""

    def __init__(self, f) -> None:
        self.f, self.position, self.started = f, 0, 0

    def write(self, data) -> int:
        written = self.f.write(data)
        self.position += written
        if self.position - self.started >= _WRITEBACK_CHUNK and _START_WRITEBACK is not None:
            self.f.flush()
            _START_WRITEBACK(self.f.fileno(), self.started, self.position - self.started, 2)  # SYNC_FILE_RANGE_WRITE
            self.started = self.position
        return written

    def flush(self) -> None:
        self.f.flush()


# ---- direct I/O ------------------------------------------------------------------------------
#
# Buffered writes of a large checkpoint go through the page cache: their speed swings with how many
# dirty pages the kernel holds (0.37 to 1.8 GB/s on the VM this was measured on), and the fsync
# then waits for all of them. Written with O_DIRECT through an aligned bounce buffer, the same
# bytes go to the disk at its speed every time: the file stays a plain torch.save file (only how
# it is written changes), the checksum is computed in the same pass, and the temp-file, fsync,
# rename protocol is unchanged. A file system without O_DIRECT (tmpfs) gets buffered writes,
# decided once per directory and logged at DEBUG.

_DIRECT_BLOCK = 4096  # O_DIRECT's alignment of offsets, lengths and buffer addresses
_DIRECT_CHUNK = 16 << 20  # bytes per direct write; each direct file leases two bounce buffers of this size
_DIRECT_FILES_AT_ONCE = 4  # bounce-buffer pairs a process keeps at most (128 MiB); more files at once go buffered
_DIRECT: Dict[str, bool] = {}  # directory -> whether O_DIRECT works there


def direct_io(directory: str) -> bool:
    """Whether checkpoints in `directory` are written with O_DIRECT (probed once, logged at DEBUG)."""
    directory = os.path.abspath(directory)
    if directory not in _DIRECT and not os.path.isdir(directory):
        return False  # decided once it exists
    if directory not in _DIRECT:
        _DIRECT[directory] = _probe_direct(directory)
        logger.debug("Checkpoint files in %s are written %s", directory,
                     "with direct I/O (O_DIRECT)" if _DIRECT[directory] else "through the page cache (no O_DIRECT here)")
    return _DIRECT[directory]


def _probe_direct(directory: str) -> bool:
    if os.environ.get("TRAINER_CKPT_DIRECT_IO", "1") == "0" or not hasattr(os, "O_DIRECT"):
        return False
    probe = os.path.join(directory, f".direct-probe.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    except OSError:
        return False
    try:
        import mmap

        with mmap.mmap(-1, _DIRECT_BLOCK) as page:  # page-aligned, as O_DIRECT wants
            os.write(fd, page)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.remove(probe)


class BouncePool:
    """
    Pairs of page-aligned buffers (anonymous mmaps) for direct writes, each leased to one file at a
    time and given back when it is closed, so that any number of saves in flight (threads,
    background and synchronous, several checkpointers) never share a buffer. Pairs are made on
    demand and kept for reuse, `limit` at most: beyond that, `lease` returns None and the file is
    written through the page cache instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.made, self.free, self.lock = limit, 0, [], threading.Lock()

    def lease(self) -> Optional[List[memoryview]]:
        with self.lock:
            if self.free:
                return self.free.pop()
            if self.made >= self.limit:
                return None
            self.made += 1
        import mmap

        return [memoryview(mmap.mmap(-1, _DIRECT_CHUNK)) for _ in range(2)]

    def give_back(self, buffers: List[memoryview]) -> None:
        with self.lock:
            self.free.append(buffers)


_BOUNCE = BouncePool(_DIRECT_FILES_AT_ONCE)


def _after_fork() -> None:
    """A forked child has none of the parent's threads: no worker threads (it starts its own),
    no lock holders, and leases held by the parent's threads never come back."""
    global _POOLS_LOCK, _BOUNCE
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()
    _BOUNCE = BouncePool(_DIRECT_FILES_AT_ONCE)


os.register_at_fork(after_in_child=_after_fork)


def open_direct(path: str) -> Optional["DirectFile"]:
    """`path` created for writing with O_DIRECT and its own bounce buffers; None when none are free."""
    buffers = _BOUNCE.lease()
    if buffers is None:
        logger.debug("%d direct writes in flight: %s goes through the page cache", _BOUNCE.limit, path)
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    except BaseException:
        _BOUNCE.give_back(buffers)
        raise
    return DirectFile(fd, buffers, _BOUNCE)


class DirectFile:
    """
    A write-only file opened with O_DIRECT: writes are gathered into a bounce buffer, and each
    full buffer is written by the I/O thread while the next one fills. The unaligned tail is
    written through the page cache when the file is closed; then the buffers go back to `owner`.
    """

    def __init__(self, fd: int, buffers: List[memoryview], owner: BouncePool) -> None:
        self.fd, self.buffers, self.owner, self.current, self.filled = fd, buffers, owner, 0, 0
        self.pending: Optional[concurrent.futures.Future] = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n, done = view.nbytes, 0
        while done < n:
            room = _DIRECT_CHUNK - self.filled
            take = min(room, n - done)
            self.buffers[self.current][self.filled:self.filled + take] = view[done:done + take]
            self.filled += take
            done += take
            if self.filled == _DIRECT_CHUNK:
                self._flush_buffer()
        return n

    def _flush_buffer(self) -> None:
        self._wait()
        buffer = self.buffers[self.current][:self.filled]
        try:
            self.pending = pool("io").submit(_write_all, self.fd, buffer)
        except RuntimeError:  # the interpreter is exiting (a background save finishing): write here
            _write_all(self.fd, buffer)
        self.current, self.filled = 1 - self.current, 0

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        try:
            self._wait()
            aligned = self.filled - self.filled % _DIRECT_BLOCK
            tail = self.buffers[self.current][aligned:self.filled]
            if aligned:
                _write_all(self.fd, self.buffers[self.current][:aligned])
            if tail.nbytes:
                import fcntl

                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                _write_all(self.fd, tail)
        finally:
            try:
                self._wait()  # an error above left no write in flight, but be certain before the buffers go back
            finally:
                os.close(self.fd)
                self.owner.give_back(self.buffers)


def _write_all(fd: int, buffer) -> None:
    while buffer.nbytes:
        written = os.write(fd, buffer)
        buffer = buffer[written:]


# ---- reading --------------------------------------------------------------------------------
#
# A cold read of a large file from one stream runs at the speed of the kernel's readahead of one
# stream, and the checksum costs CPU on top (CRC32: 3.3 GB/s on one core of the VM this was
# measured on). Two streams (the file's two halves, each read and checksummed on its own thread)
# read 512 MiB in 0.30 s against 0.45 s for one stream without a checksum in one series there, and
# kept up with one stream in others (medians of 6 to 9). The two CRC32s are combined into the
# whole file's, so records stay one CRC32 per file.

_SPLIT = 64 << 20  # files from this size are read as two halves at once
_READ_CHUNK = 1 << 20  # read, then checksummed while still in the CPU's cache (16 MiB chunks: 30% slower)


def file_crc(path: str) -> Tuple[int, int]:
    """A file's size and CRC32, read as two halves at once when it is large."""
    size = os.path.getsize(path)
    if size < _SPLIT:
        return size, _range_crc(path, 0, size)
    half = size // 2
    try:
        second = pool("read").submit(_range_crc, path, half, size)
    except RuntimeError:  # the interpreter is exiting: read here
        return size, _range_crc(path, 0, size)
    first = _range_crc(path, 0, half)
    return size, crc32_combine(first, second.result(), size - half)


def _range_crc(path: str, start: int, end: int) -> int:
    """The CRC32 of bytes [start, end) of a file (a file that got shorter fails the size check after)."""
    buffer, crc = memoryview(bytearray(_READ_CHUNK)), 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while start < end:
            n = f.readinto(buffer[:min(buffer.nbytes, end - start)])  # both release the GIL
            if not n:
                break
            crc, start = crc32(buffer[:n], crc), start + n
    return crc


def _gf2_times(matrix: List[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector, i = vector >> 1, i + 1
    return total


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32 of A + B from CRC32(A), CRC32(B) and len(B): zlib's crc32_combine (not in Python's zlib)."""
    operator = [0xEDB88320] + [1 << n for n in range(31)]  # appends one zero bit to a CRC
    for _ in range(2):
        operator = [_gf2_times(operator, row) for row in operator]  # squared: two, then four zero bits
    while len2 > 0:  # appends len2 zero bytes to crc1, a power of two at a time
        operator = [_gf2_times(operator, row) for row in operator]  # one zero byte, then 2, 4, 8...
        if len2 & 1:
            crc1 = _gf2_times(operator, crc1)
        len2 >>= 1
    return crc1 ^ crc2
