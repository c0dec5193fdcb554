"""
Fast file I/O for checkpoints, below `storage`: a writer that checksums what passes through it
(the CRC of large chunks on a helper thread, while the chunk is written), O_DIRECT writes through
reused aligned bounce buffers, and reads that checksum one chunk while the next is read.
"""
import concurrent.futures
import logging
import os
import secrets
import zlib
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger("trainer_ckpt.storage")  # what users filter on: checkpoint files

_POOLS: Dict[str, concurrent.futures.ThreadPoolExecutor] = {}


def pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread per job kind ("crc", "io", "delete"), made at first use; joined at interpreter exit."""
    if name not in _POOLS:
        _POOLS[name] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"trainer_ckpt-{name}")
    return _POOLS[name]


os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has no worker threads: it starts its own


class _ChecksummingWriter:
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
                crc = pool("crc").submit(zlib.crc32, data, self.crc32)
            except RuntimeError:  # the interpreter is exiting (a background save finishing)
                crc = None
        if crc is not None:
            written = self.f.write(data)
            self.crc32 = crc.result()
        else:
            self.crc32 = zlib.crc32(data, self.crc32)
            written = self.f.write(data)
        self.size += n
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
# decided once per directory and logged.

_DIRECT_BLOCK = 4096  # O_DIRECT's alignment of offsets, lengths and buffer addresses
_DIRECT_CHUNK = 16 << 20  # bytes per direct write; two bounce buffers of this size, kept per process
_DIRECT: Dict[str, bool] = {}  # directory -> whether O_DIRECT works there
_BOUNCE: List[Any] = []


def direct_io(directory: str) -> bool:
    """Whether checkpoints in `directory` are written with O_DIRECT (probed once, logged)."""
    directory = os.path.abspath(directory)
    if directory not in _DIRECT and not os.path.isdir(directory):
        return False  # decided once it exists
    if directory not in _DIRECT:
        _DIRECT[directory] = _probe_direct(directory)
        logger.info("Checkpoint files in %s are written %s", directory,
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
        os.write(fd, _bounce()[0][:_DIRECT_BLOCK])
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.remove(probe)


def _bounce() -> List[Any]:
    """Two page-aligned buffers (anonymous mmaps), made once per process and reused."""
    if not _BOUNCE:
        import mmap

        _BOUNCE.extend(memoryview(mmap.mmap(-1, _DIRECT_CHUNK)) for _ in range(2))
    return _BOUNCE


class _DirectFile:
    """
    A write-only file opened with O_DIRECT: writes are gathered into a bounce buffer, and each
    full buffer is written by the I/O thread while the next one fills. The unaligned tail is
    written through the page cache when the file is closed.
    """

    def __init__(self, fd: int) -> None:
        self.fd, self.buffers, self.current, self.filled = fd, _bounce(), 0, 0
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
            os.close(self.fd)


def _write_all(fd: int, buffer) -> None:
    while buffer.nbytes:
        written = os.write(fd, buffer)
        buffer = buffer[written:]


def file_crc(path: str) -> Tuple[int, int]:
    """A file's size and CRC32: the next chunk is read while the CRC thread checksums the last one."""
    buffers, current, size, crc = [bytearray(_DIRECT_CHUNK), bytearray(_DIRECT_CHUNK)], 0, 0, 0
    with open(path, "rb", buffering=0) as f:
        n = f.readinto(buffers[current])
        while n:
            chunk = memoryview(buffers[current])[:n]
            try:
                pending = pool("crc").submit(zlib.crc32, chunk, crc)
            except RuntimeError:  # the interpreter is exiting: checksum here
                pending = concurrent.futures.Future()
                pending.set_result(zlib.crc32(chunk, crc))
            size, current = size + n, 1 - current
            n = f.readinto(buffers[current])  # both release the GIL
            crc = pending.result()
    return size, crc
