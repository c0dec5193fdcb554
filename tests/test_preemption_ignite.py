"""
trainer_ckpt.ignite's `Checkpoint(..., save_on_signals=[...])` (issue 27): a real ignite `Engine`
run in a process of its own gets a real signal mid-epoch (os.kill from this test while the run
waits after a chosen iteration), saves a normal checkpoint at that iteration, and exits with
128 + the signal's number; the resumed run starts after that iteration and ends bit-identical to
an uninterrupted one; with 2 gloo ranks, one signalled rank is enough. Also: chaining to the
user's handler, `exit_on_signal=False`, `attach`, `max_host_memory`, and the construction errors.
"""
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from ignite.engine import Events

from scripts.plain_loop import max_difference
from tests import preempt_ignite_run as run
from tests._resume import resumed
from tests.test_ignite_face import make_run as face_run
from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint

SCRIPT = run.__file__
FINAL_ITERATION = 52


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run.train(str(out))  # in this process: no signals
    return run.final_state(str(out))


def start(out, *options):
    return subprocess.Popen([sys.executable, SCRIPT, str(out), "--signals", "SIGTERM,SIGUSR1", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def preempted(out, signum, wait_at, *options):
    """Runs the script until it waits after iteration `wait_at`, sends it `signum`; its exit status and output."""
    child = start(out, "--wait-at", str(wait_at), *options)
    lines = []
    for line in child.stdout:
        lines.append(line.strip())
        if line.strip() == f"waiting at {wait_at}":
            os.kill(child.pid, signum)
            break
    stdout, stderr = child.communicate(timeout=120)
    return child.returncode, lines + stdout.splitlines(), stderr


def saves(out):
    """The iterations the run printed a save at."""
    return [int(line.split()[-1]) for line in out if line.startswith("saved at ")]


def assert_same_final(got, expected):
    assert got["iteration"] == expected["iteration"] == FINAL_ITERATION
    assert max_difference(got, expected) == 0.0
    for key in expected["model"]:
        torch.testing.assert_close(got["model"][key], expected["model"][key], rtol=0, atol=0)
    for param, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(got["optimizer"]["state"][param][name], value, rtol=0, atol=0)
    assert got["scheduler"] == expected["scheduler"]  # plain numbers: the epochs stepped, the learning rate


# 13 iterations an epoch, a checkpoint every 5 (keep 2). 26 is epoch 2's last iteration: the save
# waits for EPOCH_COMPLETED's handlers (the scheduler's step), so that the resumed run, which starts
# epoch 3, matches; at 25 the periodic save is the one (not written twice). SIGTERM mid-epoch
# between two periodic saves (23): the 2-rank test below.
@pytest.mark.parametrize("name, wait_at, background", [("SIGUSR1", 26, False), ("SIGTERM", 25, True)],
                         ids=["SIGUSR1-epoch-end", "SIGTERM-background-periodic-step"])
def test_a_signal_saves_at_that_iteration_exits_and_the_resume_is_bit_exact(tmp_path, uninterrupted, name, wait_at, background):
    signum = getattr(signal, name)
    status, out, err = preempted(tmp_path, signum, wait_at, *(["--background"] if background else []))
    assert status == 128 + signum, err
    previous = (wait_at - 1) // 5 * 5
    assert visible(tmp_path) == [f"checkpoint_{previous}.pt", f"checkpoint_{wait_at}.pt", "starts.jsonl", "user_handler.txt"]
    assert (tmp_path / "user_handler.txt").read_text() == f"{signum}\n"  # the handler installed before ours ran too
    assert saves(out) == sorted({*range(5, wait_at + 1, 5), wait_at})  # one save at the signal's step
    saved = torch.load(tmp_path / f"checkpoint_{wait_at}.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == wait_at
    assert json.loads((tmp_path / f".checkpoint_{wait_at}.pt.json").read_text())["iteration"] == wait_at
    assert latest_checkpoint(tmp_path) == str(tmp_path / f"checkpoint_{wait_at}.pt")
    assert saved["scheduler"]["last_epoch"] == (2 if wait_at == 26 else 1)  # epoch 2's step is in it at its end

    before = signal.getsignal(signal.SIGTERM)
    with resumed(tmp_path, at=wait_at):  # the first iteration it trains is wait_at + 1
        run.train(str(tmp_path), signals=["SIGTERM"])
    assert signal.getsignal(signal.SIGTERM) is before  # the run's end put the handler back
    assert_same_final(run.final_state(str(tmp_path)), uninterrupted)


def test_two_ranks_save_on_a_signal_only_one_got_and_resume_bit_exact(tmp_path, uninterrupted):
    """2 gloo ranks (DistributedDataParallel): SIGTERM to rank 1 only; both agree at the step boundary, both exit 143."""
    init = f"file://{tmp_path / 'init'}"
    out = tmp_path / "run"
    ranks = ["--world-size", "2", "--init-method", init]
    rank0 = start(out, "--rank", "0", *ranks)
    status1, _, err1 = preempted(out, signal.SIGTERM, 23, "--rank", "1", *ranks)
    _, err0 = rank0.communicate(timeout=120)
    assert (rank0.returncode, status1) == (143, 143), err0 + err1
    assert (out / "user_handler.txt").read_text() == f"{signal.SIGTERM}\n"  # rank 1 alone got it
    assert visible(out) == ["checkpoint_20.pt", "checkpoint_23.pt", "starts.jsonl", "user_handler.txt"]
    record = json.loads((out / ".checkpoint_23.pt.json").read_text())
    assert (record["iteration"], record["world_size"]) == (23, 2)
    init = f"file://{tmp_path / 'init2'}"
    with resumed(out, at=23, ranks=2):
        both = [start(out, "--rank", str(rank), "--world-size", "2", "--init-method", init) for rank in (0, 1)]
        errors = [child.communicate(timeout=120)[1] for child in both]
        assert [child.returncode for child in both] == [0, 0], errors
    assert_same_final(run.final_state(str(out)), uninterrupted)  # DDP on equal batches: a single process's run


def make_run(seed=0):
    """The model, optimizer and Engine of tests/test_ignite_face.py's runs."""
    model, optimizer, trainer, _ = face_run(seed)
    return model, optimizer, trainer


DATA = [torch.full((2, 3), float(i)) / 10 for i in range(4)]


def test_without_a_trainer_to_check_the_first_call_says_attach(tmp_path):
    original = signal.getsignal(signal.SIGUSR1)
    model, optimizer, trainer = make_run()
    handler = Checkpoint({"model": model}, str(tmp_path), save_on_signals=["SIGUSR1"])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    with pytest.raises(ValueError, match=r"^trainer_ckpt.ignite.Checkpoint: `save_on_signals` needs the trainer .* got no "
                                         r"Engine in to_save \(\['model'\]\)\. Put the trainer in to_save or call handler.attach"):
        trainer.run(DATA, max_epochs=1)
    assert signal.getsignal(signal.SIGUSR1) is original  # a handler that cannot act stops listening


def test_exit_on_signal_false_saves_at_the_signal_and_trains_on(tmp_path):
    """A handler saving only the model, given the trainer by `attach`: SIGUSR1 at iteration 6 saves there, the run goes on."""
    original = signal.getsignal(signal.SIGUSR1)
    model, optimizer, trainer = make_run()
    handler = Checkpoint({"model": model}, str(tmp_path), n_saved=None, save_on_signals=["SIGUSR1"], exit_on_signal=False)
    handler.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    weights = {}

    def send(engine):
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)  # ours: the signal will not end pytest
        weights.update({k: v.clone() for k, v in model.state_dict().items()})
        os.kill(os.getpid(), signal.SIGUSR1)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), send)
    trainer.run(DATA, max_epochs=3)
    assert trainer.state.iteration == 12
    assert visible(tmp_path) == ["model_12.pt", "model_4.pt", "model_6.pt", "model_8.pt"]
    saved = torch.load(tmp_path / "model_6.pt", weights_only=True)
    for key, value in weights.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    assert signal.getsignal(signal.SIGUSR1) is original  # the run's end put it back
    plain, _, plain_trainer = make_run()
    plain_trainer.run(DATA, max_epochs=3)
    for key, value in plain.state_dict().items():  # the save changed nothing in training
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=14), send)
    trainer.run(DATA, max_epochs=4)  # a later run listens again
    assert visible(tmp_path) == ["model_12.pt", "model_14.pt", "model_16.pt", "model_4.pt", "model_6.pt", "model_8.pt"]
    assert signal.getsignal(signal.SIGUSR1) is original


def test_max_host_memory_bounds_the_snapshot_buffers(tmp_path, caplog):
    model, optimizer, trainer = make_run()
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
    handler = Checkpoint(to_save, str(tmp_path), background=True, max_host_memory=16)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=2), handler)
    with caplog.at_level(logging.INFO, logger="trainer_ckpt"):
        trainer.run(DATA, max_epochs=1)
    saver = handler.save_handler
    saver.wait()
    assert saver.engine.max_host_memory == 16
    assert "over max_host_memory=16: saving on the training thread" in caplog.text
    assert not saver.engine._snapshot._buffers  # none kept: the state (32 bytes of weights alone) is over the bound
    saved = torch.load(tmp_path / "checkpoint_4.pt", weights_only=True)
    torch.testing.assert_close(saved["model"]["weight"], model.weight.detach(), rtol=0, atol=0)


def test_bad_keywords_are_refused_at_construction(tmp_path):
    model, optimizer, trainer = make_run()
    to_save = {"model": model, "trainer": trainer}
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    where = r"^trainer_ckpt.ignite.Checkpoint: "
    cases = [
        (dict(save_on_signals="SIGTERM"), where + r"`save_on_signals` must be a list of signals, got 'SIGTERM'\. Use e\.g\."),
        (dict(save_on_signals=["SIGTERM", "SIGNOPE"]), where + r"`save_on_signals` holds 'SIGNOPE', which is not a signal\."),
        (dict(save_on_signals=["SIGKILL"]), where + r"`save_on_signals` holds SIGKILL, which no process can catch\."),
        (dict(save_on_signals=["SIGTERM"], exit_on_signal="yes"), where + r"`exit_on_signal` must be True or False, got 'yes'"),
        (dict(save_on_signals=["SIGTERM"], score_name="accuracy"),
         where + r"`save_on_signals` saves at a step, which has no score .* score_name='accuracy'\. Give save_on_signals to a Checkpoint without a score"),
        (dict(max_host_memory=-1), r"^trainer_ckpt.ignite.DiskSaver: `max_host_memory` must be a number of bytes \(an int >= 0\) or None, got -1\."),
        (dict(max_host_memory="1G"), r"^trainer_ckpt.ignite.DiskSaver: `max_host_memory` must be a number of bytes .* got '1G'\."),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            Checkpoint(to_save, str(tmp_path), **kwargs)
    import ignite.handlers as peer
    with pytest.raises(ValueError, match=where + r"`background` and `safe_globals` are for a DiskSaver this handler makes from a path, as is `max_host_memory`"):
        Checkpoint(to_save, peer.DiskSaver(tmp_path / "peer"), max_host_memory=2**20)
    with pytest.raises(ValueError, match=r"^trainer_ckpt.ignite.Checkpoint.attach: this handler has no `save_on_signals`"):
        Checkpoint(to_save, str(tmp_path)).attach(trainer)
    assert {s: signal.getsignal(s) for s in before} == before  # no refused handler listens
    with pytest.raises(ValueError, match=r"^trainer_ckpt.ignite.DiskSaver: `max_host_memory`"):
        DiskSaver(tmp_path / "other", max_host_memory=1.5)
