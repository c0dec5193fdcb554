"""
Saving in the background: a consistent CPU snapshot of the state is taken on the training
thread (into buffers reused from one save to the next; pinned, for CUDA tensors), and a worker
thread serializes, writes, fsyncs, commits and applies retention. At most one save is in flight.
A synchronous save of CUDA state is staged through the same pinned buffers (CUDA tensors only).
"""
import atexit
import copy
import logging
import queue
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from trainer_ckpt.io.sharded import SCALARS, local_part, scalars_only, with_local

logger = logging.getLogger("trainer_ckpt.background")  # its 0.1 name, which users may filter on


class Snapshotter:
    """Copies nested state (dicts, lists, tuples, tensors) to the CPU, reusing its buffers."""

    def __init__(self) -> None:
        self._buffers: Dict[Tuple, torch.Tensor] = {}
        self._devices: set = set()  # the CUDA devices copied from by the current `take`
        self._devices_only = False

    def prepare(self, state: Any, devices_only: bool = False, path: Tuple = ()) -> None:
        """
        Allocates (and touches: page faults, pinning) the buffers `take(state)` will fill, without
        copying anything: only shapes and dtypes are read, so training may change the values
        meanwhile. Run on the worker thread, it takes the allocation off the first save.
        """
        if isinstance(state, torch.Tensor):
            state = _local(state)  # a DTensor: this rank's shard
            if state.layout == torch.strided and not (devices_only and state.device.type == "cpu"):
                buffer = self._buffers.get(path)
                if buffer is None or buffer.shape != state.shape or buffer.dtype != state.dtype:
                    buffer = torch.empty(state.shape, dtype=state.dtype, pin_memory=state.is_cuda)
                    buffer.zero_()
                    self._buffers[path] = buffer
        elif isinstance(state, dict):
            for key, value in state.items():
                self.prepare(value, devices_only, path + (key,))
        elif type(state) in (list, tuple):
            for i, value in enumerate(state):
                self.prepare(value, devices_only, path + (i,))

    @property
    def nbytes(self) -> int:
        """The host memory its buffers hold."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self._buffers.values())

    def take(self, state: Any, devices_only: bool = False) -> Any:
        """
        A copy of `state` in the CPU buffers (`devices_only`: CPU tensors are passed through, not
        copied). Device tensors are copied into pinned buffers asynchronously, on each device's
        current stream (ordered after the training step that wrote them), then waited for at once.
        """
        self._devices = set()
        self._devices_only = devices_only
        copied = self._copy(state, ())
        for device in self._devices:
            torch.cuda.current_stream(device).synchronize()
        return copied

    def _copy(self, obj: Any, path: Tuple) -> Any:
        if type(obj) in SCALARS:
            return obj
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, path)
        if isinstance(obj, dict):
            copied = type(obj)() if isinstance(obj, OrderedDict) else {}
            for key, value in obj.items():
                copied[key] = self._copy(value, path + (key,))
            if hasattr(obj, "_metadata"):  # a module's state_dict carries its versions here
                copied._metadata = copy.deepcopy(obj._metadata)  # type: ignore[attr-defined]
            return copied
        if type(obj) in (list, tuple):
            if scalars_only(obj):  # a random state's 625 ints
                return type(obj)(obj)
            return type(obj)(self._copy(value, path + (i,)) for i, value in enumerate(obj))
        return copy.deepcopy(obj)

    def _tensor(self, tensor: torch.Tensor, path: Tuple) -> torch.Tensor:
        local = local_part(tensor)
        if local is not None:  # sharded state: this rank's shard, in a DTensor of the same spec
            return with_local(tensor, self._tensor(local, path))
        tensor = tensor.detach()
        if self._devices_only and tensor.device.type == "cpu":
            return tensor
        if tensor.layout != torch.strided:
            return tensor.to("cpu", copy=True)
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
            self._buffers[path] = buffer
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        if tensor.is_cuda:
            self._devices.add(tensor.device)
        return buffer


def require_host_memory(where: str, value: Any, error: type = ValueError) -> None:
    """Raises `error` when `max_host_memory` is neither None nor a number of bytes (checked where a face is built)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise error(f"{where}: `max_host_memory` must be a number of bytes (an int >= 0) or None, got {value!r}. "
                    "Use e.g. max_host_memory=8 * 2**30, or None for no bound.")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    local = local_part(tensor)
    return tensor if local is None else local


def on_device(state: Any) -> bool:
    """Whether nested state holds a tensor on an accelerator (CUDA)."""
    if isinstance(state, torch.Tensor):
        return _local(state).is_cuda
    if isinstance(state, dict):
        return any(on_device(value) for value in state.values())
    if type(state) in (list, tuple) and not scalars_only(state):
        return any(on_device(value) for value in state)
    return False


class BackgroundWriter:
    """
    Runs one job at a time on a worker thread; its error surfaces at the next `check()`. The
    worker is started once and waits for jobs: starting a thread per save would make the training
    thread wait for the new thread to start, then for the GIL (a 5 ms switch interval).
    """

    def __init__(self) -> None:
        self._jobs: "queue.Queue[Callable[[], None]]" = queue.Queue(maxsize=1)
        self._idle = threading.Event()
        self._idle.set()
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self.check()
        if self._thread is None:
            # A daemon, so an idle worker never keeps the process alive; at exit, a save in
            # flight is waited for first.
            self._thread = threading.Thread(target=self._work, name="trainer_ckpt-save", daemon=True)
            self._thread.start()
            atexit.register(self._finish_at_exit)
        self._idle.clear()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException as e:  # kept, and raised on the training thread
                logger.debug("Background save failed", exc_info=True)
                self._error = e
            finally:
                self._idle.set()

    def wait(self) -> None:
        self._idle.wait()

    def _finish_at_exit(self) -> None:
        self.wait()
        if self._error is not None:  # too late to raise anywhere: say it loudly
            logger.error("A background checkpoint save failed: %r", self._error, exc_info=self._error)

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()
