"""
Saving on the scheduler's signal: SLURM sends SIGTERM (or `--signal`'s, often SIGUSR1) some
seconds before it kills a job, spot VMs send SIGTERM. A face given `save_on_signals` builds a
`Preemption`; its handler only records the signal. At the next step boundary the face asks
`requested()` (every rank agrees: the largest signal number any rank received, one all-reduce on
the checkpoint group), saves a normal checkpoint at that step, then `finish()` waits until it is
committed (and uploaded) and exits the process with status 128 + the signal number, so that the
scheduler requeues the job; `exit_on_signal=False` goes on training instead.

Handlers are process-wide, so they are shared: one per signal, installed by the first listener
and put back by the last (unless someone installed another on top since, which then chains to
ours). Each chains to the handler it replaced when that is a function (a framework's, the
user's); the default actions (terminate, KeyboardInterrupt) are what this replaces. A forked
child (a data-loader worker) gets the signal's default action back and takes it: it is not the
process that saves.
"""
import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from trainer_ckpt.core import distributed

logger = logging.getLogger("trainer_ckpt.preemption")

UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
_LOCK = threading.Lock()
# signal -> (the handler it replaced, listeners, the process that installed it: a forked child keeps
# this entry, and then knows it is not the process that saves)
_INSTALLED: Dict[int, Tuple[Any, List["Preemption"], int]] = {}


def parse(where: str, key: str, value: Any, error: type = ValueError) -> Tuple[int, ...]:
    """Signal numbers from a list of names (`"SIGTERM"`, `"USR1"`) or numbers; raises `error` for anything else."""
    if value is None:
        return ()
    if isinstance(value, (str, int)) or not isinstance(value, Sequence):
        raise error(f"{where}: `{key}` must be a list of signals, got {value!r}. Use e.g. {key}=[\"SIGTERM\", \"SIGUSR1\"].")
    numbers = []
    for item in value:
        number = None
        if isinstance(item, str):
            name = item.strip().upper()
            found = getattr(signal, name if name.startswith("SIG") else "SIG" + name, None)
            number = int(found) if isinstance(found, signal.Signals) else None
        elif isinstance(item, int) and not isinstance(item, bool):
            number = int(item) if item in set(signal.valid_signals()) else None
        if number is None:
            raise error(f"{where}: `{key}` holds {item!r}, which is not a signal. Use a name (\"SIGTERM\", \"SIGUSR1\") or its number.")
        if number in UNCATCHABLE:
            raise error(f"{where}: `{key}` holds {signal.Signals(number).name}, which no process can catch. "
                        "Have the scheduler send SIGTERM or SIGUSR1 first (SLURM: --signal=USR1@120).")
        numbers.append(number)
    return tuple(dict.fromkeys(numbers))


_HANDLING = threading.local()  # the signals being handled on this thread: a handler chained back to ours is not followed twice


def _handle(signum: int, frame: Any) -> None:
    handling = _HANDLING.__dict__.setdefault("signals", set())
    if signum in handling:
        return
    handling.add(signum)
    try:
        _dispatch(signum, frame)
    finally:
        handling.discard(signum)


def _dispatch(signum: int, frame: Any) -> None:
    previous, listeners, pid = _INSTALLED.get(signum, (signal.SIG_DFL, [], os.getpid()))
    if os.getpid() != pid:  # a forked child: the signal's default action, as before we were installed
        signal.signal(signum, previous if callable(previous) or previous == signal.SIG_IGN else signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for listener in listeners:
        listener.received = signum
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, frame)


class Preemption:
    """
    # Parameters

    signals : the signal numbers to save on (see `parse`)
    exit : `bool`, optional (default=`True`)
        Exit with 128 + the signal's number once the checkpoint is committed; False goes on training.
    where : `str`, optional
        Names the face in messages.
    """

    def __init__(self, signals: Sequence[int], exit: bool = True, where: str = "trainer_ckpt") -> None:
        self.signals, self.exit, self.where = tuple(signals), exit, where
        self.received: Optional[int] = None
        self._listening = False
        if self.signals:
            self._listen()

    def _listen(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise ValueError(f"{self.where}: `save_on_signals` needs the main thread (only it may handle signals), got "
                             f"thread {threading.current_thread().name!r}. Build the checkpointer in the main thread.")
        with _LOCK:
            for signum in self.signals:
                installed = _INSTALLED.get(signum)
                # Installed anew too in a forked child (the entry is its parent's), and when ours is
                # gone and nobody listens (someone put theirs back over it).
                if installed is None or installed[2] != os.getpid() or (not installed[1] and signal.getsignal(signum) is not _handle):
                    current = signal.signal(signum, _handle)
                    previous = installed[0] if installed is not None and current is _handle else current
                    _INSTALLED[signum] = (previous, [], os.getpid())
                _INSTALLED[signum][1].append(self)
        self._listening = True

    def requested(self) -> Optional[int]:
        """
        The signal to save for now, or None; once returned, it is taken. In a distributed run every
        rank must call this at the same step boundaries (a collective): all ranks agree.
        """
        if not self.signals:
            return None
        mine, self.received = self.received or 0, None
        agreed = distributed.largest(mine) if distributed.world_size() > 1 else mine
        if not agreed:
            return None
        logger.warning("%s: got %s; saving a checkpoint at this step%s", self.where, signal.Signals(agreed).name,
                       ", then exiting" if self.exit else "")
        return agreed

    def finish(self, signum: int, wait: Callable[[], None]) -> None:
        """
        After the face's save for `signum`: `wait` for it (committed, uploaded), and for every rank
        to get there (the primary commits: a rank that exits first may have the launcher kill the
        others), then exit with 128 + `signum` (unless `exit` is False).
        """
        wait()
        if distributed.world_size() > 1:
            distributed.dist.barrier(group=distributed.group())
        if not self.exit:
            return
        logger.warning("%s: checkpoint committed; exiting with status %d for %s", self.where, 128 + signum,
                       signal.Signals(signum).name)
        self.close()
        raise SystemExit(128 + signum)

    def close(self) -> None:
        """Stops listening; the last listener of a signal puts back the handler it replaced (if ours is still the one installed)."""
        if not self._listening:
            return
        self._listening = False
        with _LOCK:
            for signum in self.signals:
                previous, listeners, _ = _INSTALLED[signum]
                listeners.remove(self)
                if not listeners and signal.getsignal(signum) is _handle and threading.current_thread() is threading.main_thread():
                    signal.signal(signum, previous)
                    del _INSTALLED[signum]
