"""
Saving in the background: a consistent CPU snapshot of the state is taken on the training
thread (into buffers reused from one save to the next; pinned, for CUDA tensors), and a worker
thread serializes, writes, fsyncs, commits and applies retention. At most one save is in flight.
"""
import copy
import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


class Snapshotter:
    """Copies nested state (dicts, lists, tuples, tensors) to the CPU, reusing its buffers."""

    def __init__(self) -> None:
        self._buffers: Dict[Tuple, torch.Tensor] = {}
        self._cuda = False

    def take(self, state: Any, path: Tuple = ()) -> Any:
        self._cuda = False
        copied = self._copy(state, path)
        if self._cuda:
            torch.cuda.current_stream().synchronize()  # the device-to-host copies were asynchronous
        return copied

    def _copy(self, obj: Any, path: Tuple) -> Any:
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
            return type(obj)(self._copy(value, path + (i,)) for i, value in enumerate(obj))
        return copy.deepcopy(obj)

    def _tensor(self, tensor: torch.Tensor, path: Tuple) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.layout != torch.strided:
            return tensor.to("cpu", copy=True)
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
            self._buffers[path] = buffer
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        self._cuda = self._cuda or tensor.is_cuda
        return buffer


class BackgroundWriter:
    """Runs one job at a time on a worker thread; its error surfaces at the next `check()`."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self.check()
        # Not a daemon: the interpreter waits for a save in flight before it exits.
        self._thread = threading.Thread(target=self._run, args=(job,), name="trainer_ckpt-save")
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # kept, and raised on the training thread
            logger.debug("Background save failed", exc_info=True)
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
