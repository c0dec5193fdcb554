"""
Exact resume under AllenNLP's trainer: the random state (and the little else the trainer forgets)
saved with each checkpoint, and put back at the moments the uninterrupted run would have had it.

Who draws random numbers when (AllenNLP 2.10.1): the training loader shuffles with python's
`random` when an epoch's iterator is first advanced; the forward pass draws dropout masks from
torch's generator. On `--recover` the trainer first replays the loader (every epoch before the
checkpoint's, and the first B batch groups of its epoch, without forward passes), which shuffles,
and so consumes python's `random`, again. Restoring the generators inside `load_checkpoint` is
therefore useless. Each checkpoint stores two states instead:

- the state at the start of its epoch (captured right before that epoch's first batch is asked
  for: the shuffle happens then), restored right before the resumed epoch's first batch;
- the state at the save point, restored right before the first batch that is really trained
  (raw batch B * k, k = gradient accumulation steps; at the end of the iterator when the
  checkpoint follows the last batch group).

For an end-of-epoch checkpoint both are the same. The hook is a thin proxy around
`trainer.data_loader`, installed by `load_checkpoint()` on fresh runs too (so epoch-start states
are captured from epoch 0). `load_checkpoint()` gets no trainer, so it looks for the trainer that
owns the checkpointer on its call stack (`GradientDescentTrainer._maybe_restore_checkpoint`);
without one (a custom loop), only the save-point state is restored, at load time.
"""
import inspect
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from trainer_ckpt.core import distributed
from trainer_ckpt.core.rng import capture_rng, restore_rng

logger = logging.getLogger("trainer_ckpt.resume")  # its 0.1 name, which users may filter on

KEY = "trainer_ckpt_resume"  # our entry in the trainer's training state


def find_trainer(checkpointer: Any) -> Optional[Any]:
    """The trainer whose `_checkpointer` is `checkpointer`, from the caller's stack, if any."""
    frame = inspect.currentframe()
    try:
        for _ in range(12):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if candidate is not None and getattr(candidate, "_checkpointer", None) is checkpointer:
                return candidate
            group = getattr(candidate, "_checkpointer", None)
            if checkpointer in getattr(group, "members", ())[:1]:
                return candidate
    finally:
        del frame
    return None


class Plan:
    """What to put back, and when, for the checkpoint being resumed from."""

    def __init__(self, epochs: int, batches: int, epoch_start: Optional[Dict], save_point: Dict,
                 scaler: Optional[Dict]) -> None:
        self.epochs, self.batches = epochs, batches
        self.epoch_start, self.save_point, self.scaler = epoch_start, save_point, scaler


class ResumingLoader:
    """
    Delegates to the trainer's training data loader; around each epoch's iterator it records the
    random state at the epoch's start and, in the resumed epoch, puts the saved states back.
    """

    def __init__(self, loader: Any, trainer: Any, tracker: "ResumeTracker") -> None:
        self._loader, self._trainer, self._tracker = loader, trainer, tracker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        hook, self._tracker.before_epoch = self._tracker.before_epoch, None
        if hook is not None:
            hook()
        epoch = self._trainer._epochs_completed
        plan = self._tracker.plan if self._tracker.plan and self._tracker.plan.epochs == epoch else None
        accumulation = getattr(self._trainer, "_num_gradient_accumulation_steps", 1)
        # This body runs when the epoch's first batch is asked for; a loader may shuffle in
        # `iter()` or at its first `next()`: both come after the state is in place.
        if plan is not None:
            if plan.epoch_start is not None:
                restore_rng(plan.epoch_start)
            _bring_callbacks_to(self._trainer, epoch)
        self._tracker.epoch_start = (epoch, capture_rng())
        inner = iter(self._loader)
        count = 0
        while True:
            if plan is not None and count == plan.batches * accumulation:
                restore_rng(plan.save_point)
                scaler = getattr(self._trainer, "_scaler", None)
                if scaler is not None and plan.scaler:
                    scaler.load_state_dict(plan.scaler)
                self._tracker.plan = plan = None
            try:
                batch = next(inner)
            except StopIteration:
                return
            count += 1
            yield batch


def _bring_callbacks_to(trainer: Any, epoch: int) -> None:
    """Callbacks whose state derives from the epoch keep their epoch-0 state after a restore."""
    from allennlp.training.callbacks import ShouldValidateCallback, TrackEpochCallback

    for callback in getattr(trainer, "_callbacks", []):
        if isinstance(callback, TrackEpochCallback):
            trainer.model.epoch = epoch
        elif isinstance(callback, ShouldValidateCallback):
            trainer._should_validate_this_epoch = callback._should_validate(epoch=epoch)


class ResumeTracker:
    """The checkpointer's side: what goes into each checkpoint, and the plan on resume."""

    def __init__(self, restore: bool) -> None:
        self.restore = restore
        self.plan: Optional[Plan] = None
        self.epoch_start: Optional[tuple] = None  # (epoch, state) of the current epoch
        self.trainer: Optional[Any] = None
        # Called once when the next epoch asks for its first batch: a preemption's exit, deferred
        # from an epoch-end save until the trainer has linked best.th (see checkpointer._stop).
        self.before_epoch: Optional[Callable[[], None]] = None

    def attach(self, trainer: Any) -> None:
        """Wraps the trainer's data loader (once)."""
        if trainer is None or self.trainer is trainer:
            return
        self.trainer = trainer
        loader = getattr(trainer, "data_loader", None)
        if loader is not None and not isinstance(loader, ResumingLoader):
            trainer.data_loader = ResumingLoader(loader, trainer, self)
        _warn_if_not_exact(trainer)

    def state(self, trainer: Any, epochs: int, batches: int, world_size: int) -> Dict[str, Any]:
        """What to add to a checkpoint's training state (every rank's, gathered to each)."""
        here = capture_rng()
        start = here if batches == 0 else (self.epoch_start[1] if self.epoch_start and self.epoch_start[0] == epochs else None)
        scaler = getattr(trainer, "_scaler", None)
        mine = {"epoch_start": start, "save_point": here,
                "scaler": scaler.state_dict() if scaler is not None else None}
        ranks: List[Dict[str, Any]] = [mine]
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(ranks, mine, group=distributed.group())
        return {"format": 1, "ranks": ranks}

    def resume(self, training_state: Dict[str, Any], progress: tuple, rank: int, trainer: Any) -> None:
        saved = training_state.pop(KEY, None)
        if not self.restore:
            return
        if saved is None or rank >= len(saved.get("ranks", [])):
            logger.warning(
                "Checkpoint e%d_b%d carries no random state (written by AllenNLP's own checkpointer, "
                "or with another world size): training resumes, but not exactly as it would have gone on.",
                *progress,
            )
            return
        mine = saved["ranks"][rank]
        self.plan = Plan(progress[0], progress[1], mine["epoch_start"], mine["save_point"], mine["scaler"])
        if trainer is None:  # no loader to hook: the best that can be done is now
            restore_rng(mine["save_point"])
            self.plan = None


def _warn_if_not_exact(trainer: Any) -> None:
    loader = getattr(trainer, "data_loader", None)
    loader = getattr(loader, "_loader", loader)
    if getattr(loader, "num_workers", 0) and getattr(loader, "max_instances_in_memory", None):
        logger.warning(
            "Data loader workers (num_workers > 0) with max_instances_in_memory reseed python's random "
            "in each worker: a resumed run will not match an uninterrupted one exactly."
        )
    device = getattr(trainer, "cuda_device", None)
    if isinstance(device, torch.device) and device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        logger.warning(
            "Training on a GPU without torch.use_deterministic_algorithms(True): some kernels are "
            "nondeterministic, so a resumed run can drift from an uninterrupted one."
        )
