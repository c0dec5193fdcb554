"""One writer per run directory: an OS file lock, released by the kernel when the process ends."""
import fcntl
import os
from typing import Dict, List

_WHERE = "trainer_ckpt checkpointer"


def _configuration_error(message: str) -> Exception:
    """AllenNLP's ConfigurationError, imported only when there is one to raise (ValueError without AllenNLP)."""
    try:
        from allennlp.common.checks import ConfigurationError as error
    except ImportError:
        error = ValueError
    return error(message)

# Directories this process holds the writer's lock on: realpath -> [file descriptor, holders]. The
# lock is an flock: the kernel releases it when the process exits or is killed, so a crashed run
# never blocks its own --recover. Checkpointers of one process share it (a group, a restart).
_LOCKS: Dict[str, List[int]] = {}
LOCK_FILE = ".trainer_ckpt.core.lock"


def lock_directory(directory: str) -> str:
    key = os.path.realpath(directory)
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        return key
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise _configuration_error(
            f"{_WHERE}: serialization directory {directory} is not writable, got "
            f"{type(e).__name__}: {e}. Give a writable directory, or use read_only=True to only read."
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise _configuration_error(
            f"{_WHERE}: serialization directory {directory} is in use by another training process, "
            f"got its lock held by pid {holder}. Wait for that run to end or stop it, or give this "
            "run another serialization directory; to only read checkpoints, use read_only=True."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[key] = [fd, 1]
    return key


def _drop_inherited_locks() -> None:
    """
    In a forked child (a data-loader worker, anything the trainer forks): close the inherited
    descriptors. An flock belongs to the open file description, which a fork shares, so a
    worker that outlived a SIGKILLed trainer would otherwise hold the lock and block --recover.
    Closing the child's copy leaves the parent's lock in place (no LOCK_UN: that would drop it
    for the parent too).
    """
    for fd, _ in _LOCKS.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def unlock_directory(key: str) -> None:
    held = _LOCKS.get(key)
    if held is not None:
        held[1] -= 1
        if held[1] == 0:
            del _LOCKS[key]
            os.close(held[0])  # closing the only descriptor releases the flock
