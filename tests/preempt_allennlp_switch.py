"""
A test aid for tests/test_preemption_allennlp.py, loaded into `allennlp train` with
`--include-package tests.preempt_allennlp_switch`: the process sends itself a real signal at a
chosen point, as a scheduler would.

- TRAINER_CKPT_SIGNAL="SIGTERM@E:B": the trainer callback `preempt_switch` sends SIGTERM right
  after batch B of epoch E (0-based epoch index) has been trained, before the checkpointer sees
  that batch; with B = 0 (E >= 1), at the end of epoch E - 1, after validation, before the trainer
  calls the checkpointer for the epoch end. Only the primary sends it (in a distributed run the
  other ranks learn of it from the checkpointer's agreement).
- TRAINER_CKPT_USER_HANDLER="SIGUSR1:/path/file": a handler of the user's own for that signal,
  installed when this module is imported (before the checkpointer is built); it appends the
  signal's number to the file.
Unset, both do nothing, so the same config serves the interrupted run and its `--recover`.
"""
import os
import signal

from allennlp.training.callbacks import TrainerCallback


def _user_handler(path: str):
    def handle(signum, frame) -> None:
        with open(path, "a") as f:
            f.write(f"{signum}\n")

    return handle


if os.environ.get("TRAINER_CKPT_USER_HANDLER"):
    _name, _path = os.environ["TRAINER_CKPT_USER_HANDLER"].split(":", 1)
    signal.signal(getattr(signal, _name), _user_handler(_path))


def _armed():
    """(signal number, epochs, batches) from TRAINER_CKPT_SIGNAL, or None."""
    value = os.environ.get("TRAINER_CKPT_SIGNAL")
    if not value:
        return None
    name, at = value.split("@")
    epochs, batches = (int(x) for x in at.split(":"))
    return getattr(signal, name), epochs, batches


@TrainerCallback.register("preempt_switch")
class PreemptSwitch(TrainerCallback):
    def on_batch(self, trainer, batch_inputs, batch_outputs, batch_metrics, epoch, batch_number,
                 is_training, is_primary=True, batch_grad_norm=None, **kwargs) -> None:
        armed = _armed()
        if armed and is_primary and is_training and (trainer._epochs_completed, trainer._batches_in_epoch_completed) == armed[1:]:
            os.kill(os.getpid(), armed[0])

    def on_epoch(self, trainer, metrics, epoch, is_primary=True, **kwargs) -> None:
        armed = _armed()
        if armed and is_primary and armed[2] == 0 and epoch + 1 == armed[1]:
            os.kill(os.getpid(), armed[0])
