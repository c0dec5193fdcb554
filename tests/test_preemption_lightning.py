"""
`save_on_signals` and `max_host_memory` in the Lightning face, in real Lightning 2.6.6 runs on the
CPU (tests/preempt_lightning_loop.py): each run is a process of its own that the test sends a real
signal with os.kill once the run says it is in the step (or the validation) the test chose. The
run saves at that step, exits with 128 + the signal's number, and `fit(ckpt_path="last")` in a new
process resumes at that step and ends bit-identical to a run never interrupted. Two DDP ranks on
gloo agree: a signal to one of them makes both save that step and exit.

Every run is forked from a server process that imported torch and Lightning once (importing them
takes most of a run's time on a loaded machine); trainer_ckpt is imported in each run itself.
"""
import logging
import multiprocessing
import os
import signal
import socket

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from tests.preempt_lightning_loop import WAIT_AT, run
from trainer_ckpt.io import durable
from trainer_ckpt.lightning import CheckpointIO, ModelCheckpoint

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["torch", "lightning.pytorch"])
TIMEOUT = 120


def start(directory, tag, **kwargs):
    """A run in a process of its own; returns it and the end of the pipe it reports on."""
    reader, writer = CONTEXT.Pipe(duplex=False)
    process = CONTEXT.Process(target=run, args=(str(directory), tag), kwargs={**kwargs, "report": writer})
    process.start()
    writer.close()
    return process, reader


def finished(process):
    process.join(TIMEOUT)
    assert process.exitcode is not None, "the run did not end"
    return process.exitcode


def signalled(directory, signal_name, **kwargs):
    """A run sent `signal_name` by this process once it says it is waiting; its step then and its exit status."""
    process, reader = start(directory, "signalled", signal_name=signal_name, **kwargs)
    assert reader.poll(TIMEOUT), "the run never reached the step chosen"
    message, step = reader.recv()  # EOFError: the run died before it got there
    os.kill(process.pid, getattr(signal, signal_name))
    return step, finished(process)


def completed(directory, tag, **kwargs):
    """A run that ends normally; what it wrote at its end."""
    process, _ = start(directory, tag, **kwargs)
    assert finished(process) == 0
    return torch.load(f"{directory}.{tag}.pt", weights_only=True)


def assert_identical(a, b):
    for part in ("weights", "optimizer"):
        torch.testing.assert_close(a[part], b[part], rtol=0, atol=0)


def visible(directory):
    return sorted(f for f in os.listdir(directory) if not f.startswith("."))


def saved_step(directory, name):
    """The global step a checkpoint's record gives, checked against the one inside the file."""
    step = durable.read_json(str(directory / f".{name}.json"))["global_step"]
    assert torch.load(directory / name, weights_only=True)["global_step"] == step
    return step


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run never interrupted."""
    return completed(tmp_path_factory.mktemp("straight") / "ckpt", "straight")


@pytest.mark.parametrize("signal_name, background", [("SIGTERM", False), ("SIGUSR1", False), ("SIGTERM", True)],
                         ids=["SIGTERM", "SIGUSR1", "SIGTERM-background"])
def test_a_signal_mid_epoch_saves_that_step_exits_128_plus_n_and_the_resumed_run_ends_bit_identical(
        tmp_path, straight, signal_name, background):
    directory = tmp_path / "ckpt"
    step, status = signalled(directory, signal_name, wait_in="train", background=background)
    assert (step, status) == (WAIT_AT, 128 + getattr(signal, signal_name))
    # The step it was in (the 11th: 10 were done) completed, then was saved, as a periodic save
    # names it, with `last` beside it; the run stopped there.
    assert visible(directory) == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=1-step=11.ckpt",
                                  "epoch=1-step=9.ckpt", "last.ckpt"]
    assert saved_step(directory, "epoch=1-step=11.ckpt") == saved_step(directory, "last.ckpt") == 11
    # The handler the user installed before the callback was called too (it chains).
    assert (tmp_path / "ckpt.handler").read_text() == f"{getattr(signal, signal_name)}\n"

    resumed = completed(directory, "resumed", signal_name=signal_name, background=background, resume=True)
    assert resumed["first_step"] == 11  # it resumed after the 11 steps saved (from scratch: 0)
    assert_identical(resumed, straight)


def test_exit_on_signal_false_saves_that_step_and_trains_on_to_the_end(tmp_path, straight):
    directory = tmp_path / "ckpt"
    step, status = signalled(directory, "SIGUSR1", wait_in="train", exit_on_signal=False)
    assert (step, status) == (WAIT_AT, 0)
    assert saved_step(directory, "epoch=1-step=11.ckpt") == 11  # not a periodic step: the signal's save
    assert "epoch=2-step=24.ckpt" in visible(directory) and saved_step(directory, "last.ckpt") == 24
    ended = torch.load(f"{directory}.signalled.pt", weights_only=True)
    assert ended["first_step"] == 0 and ended["handler_back"]  # the user's handler is installed again after fit
    assert_identical(ended, straight)  # the save changed nothing in the run


def test_a_sigterm_in_validation_that_lightning_stops_the_run_for_is_saved_there_and_exits_143(tmp_path, straight):
    """Lightning's own SIGTERM handling (its flag, then `SIGTERMException` at its next check, which
    exits with status 0) stops the run in validation before our next step boundary: the face
    saves the step the run is at in `on_exception`, and the status becomes 143."""
    directory = tmp_path / "ckpt"
    step, status = signalled(directory, "SIGTERM", wait_in="validation")
    assert (step, status) == (8, 143)
    assert visible(directory) == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]
    assert saved_step(directory, "epoch=0-step=8.ckpt") == saved_step(directory, "last.ckpt") == 8

    resumed = completed(directory, "resumed", resume=True)
    assert resumed["first_step"] == 8
    assert_identical(resumed, straight)


@pytest.mark.parametrize("kwargs, message", [
    (dict(save_on_signals="SIGTERM"), "`save_on_signals` must be a list of signals, got 'SIGTERM'"),
    (dict(save_on_signals=["SIGTERM", "SIGNOPE"]), "`save_on_signals` holds 'SIGNOPE', which is not a signal"),
    (dict(save_on_signals=[signal.SIGKILL]), "`save_on_signals` holds SIGKILL, which no process can catch"),
    (dict(save_on_signals=[True]), "`save_on_signals` holds True, which is not a signal"),
    (dict(exit_on_signal="no"), "`exit_on_signal` must be True or False, got 'no'"),
    (dict(max_host_memory=-1), "`max_host_memory` must be a number of bytes (an int >= 0) or None, got -1"),
    (dict(max_host_memory="8G"), "`max_host_memory` must be a number of bytes (an int >= 0) or None, got '8G'"),
])
def test_bad_values_are_refused_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as raised:
        ModelCheckpoint(dirpath=tmp_path, **kwargs)
    assert str(raised.value).startswith(f"trainer_ckpt.lightning.ModelCheckpoint: {message}")
    if "max_host_memory" in kwargs:
        with pytest.raises(ValueError) as raised:
            CheckpointIO(background=True, **kwargs)
        assert str(raised.value).startswith(f"trainer_ckpt.lightning.CheckpointIO: {message}")


def test_max_host_memory_reaches_the_engines_of_both_classes_and_fit_puts_the_handlers_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trainer_ckpt")
    before = signal.getsignal(signal.SIGUSR1)
    callback = ModelCheckpoint(dirpath=tmp_path / "callback", background=True, max_host_memory=16, save_on_signals=["USR1"])
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(BoringModel())
    assert signal.getsignal(signal.SIGUSR1) is before
    assert saved_step(tmp_path / "callback", "epoch=0-step=2.ckpt") == 2
    io = CheckpointIO(background=True, max_host_memory=16)
    io.save_checkpoint({"global_step": 5, "w": torch.ones(8)}, tmp_path / "io" / "a.ckpt")
    io.teardown()
    assert saved_step(tmp_path / "io", "a.ckpt") == 5
    over = [r.getMessage() for r in caplog.records if "over max_host_memory=16" in r.getMessage()]
    assert [m.split(":")[0] for m in over] == ["trainer_ckpt.lightning.ModelCheckpoint", "trainer_ckpt.lightning.CheckpointIO"]


def test_two_ddp_ranks_agree_a_signal_to_one_rank_saves_that_step_and_both_exit(tmp_path):
    """2 gloo ranks: SIGUSR1 reaches rank 1 only; rank 0, which never got it, saves the same step with it (it
    writes the files) and both exit with 138."""
    directory = tmp_path / "ckpt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [start(directory, "ddp", signal_name="SIGUSR1", wait_in="train", world_size=2, rank=rank, port=port)
             for rank in (0, 1)]
    (zero, _), (one, reader) = ranks
    assert reader.poll(TIMEOUT), "rank 1 never reached the step chosen"
    assert reader.recv() == ("waiting", WAIT_AT)
    os.kill(one.pid, signal.SIGUSR1)
    assert [finished(zero), finished(one)] == [138, 138]
    assert (tmp_path / "ckpt.handler").read_text() == f"{signal.SIGUSR1}\n"  # rank 1's handler alone was called
    assert saved_step(directory, "epoch=1-step=11.ckpt") == saved_step(directory, "last.ckpt") == 11
    assert "epoch=1-step=12.ckpt" not in visible(directory)
