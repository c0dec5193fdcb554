"""
trainer_ckpt.mmengine's `save_on_signals` in a real iteration-based mmengine `Runner`
(tests/preempt_mmengine_run.py, 24 iterations, 8 a pass over the data, periodic saves every 10):
a real signal mid-pass makes it save `iter_N.pth` at the iteration it was in, update
`last_checkpoint`, and exit with 128 + the signal (mmengine lets the SystemExit through);
`Runner(resume=True)` goes on at N + 1 and ends bit-identical to an uninterrupted run. The
user's own handler is still called; `exit_on_signal=False` trains on; two gloo ranks save and
exit together when one got the signal; a signal at a periodic save's iteration saves once; bad
values are refused at construction; `max_host_memory` reaches the engine.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests._resume import assert_starts, resumed
from tests.preempt_mmengine_run import MAX_ITERS, build_runner, train
from trainer_ckpt.mmengine import CheckpointHook, mmengine_safe_globals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "preempt_mmengine_run.py")
AT = 13  # mid-way through the second pass over the data; the periodic saves are at 10, 20 and 24


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final state of a run of the same length that no signal interrupted."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    train(str(directory), {})
    return torch.load(directory / "final.pt", weights_only=True)


def launch(work_dir, hook, *args):
    """The script, to wait at iteration AT (see `waiting`)."""
    command = [sys.executable, SCRIPT, str(work_dir), "--wait-at", str(AT), "--hook", json.dumps(hook), *args]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def waiting(child):
    """Reads a launched run's output until it waits at iteration AT; returns the process and that output
    (stdout and stderr: mmengine's logger prints to stdout)."""
    output = []
    for line in child.stdout:
        output.append(line)
        if line.strip() == f"at {AT}":
            return child, output
    child.kill()
    raise AssertionError(f"the run ended before iteration {AT}:\n" + "".join(output))


def start(work_dir, hook, *args):
    return waiting(launch(work_dir, hook, *args))


def release(child):
    """Lets a run waiting at iteration AT go on."""
    child.stdin.write("go\n")
    child.stdin.flush()


def finished(child, output):
    """A released run's exit status and whole output."""
    try:
        rest, _ = child.communicate(timeout=120)
    finally:
        child.kill()
    return child.returncode, "".join(output) + rest


def interrupt(work_dir, signum, **hook):
    """Runs the script until iteration AT, sends it `signum` (os.kill from here), lets it go on; returns its exit status and output."""
    child, output = start(work_dir, hook)
    os.kill(child.pid, signum)
    release(child)
    return finished(child, output)


def load(path):
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        return torch.load(path, weights_only=True)


def checkpoints(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".pth"))


def users_handler_calls(directory):
    path = directory / "user_handler.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("signum, background", [  # each run costs a process start: SIGUSR1 goes with background saves
    (signal.SIGTERM, False),
    (signal.SIGUSR1, True),
], ids=["SIGTERM", "SIGUSR1-background"])
def test_signal_saves_the_iteration_it_is_in_exits_and_resumes_bit_identical(tmp_path, uninterrupted, signum, background):
    hook = dict(save_on_signals=["SIGTERM", "SIGUSR1"], background=background)
    status, err = interrupt(tmp_path, signum, **hook)
    assert status == 128 + signum, err
    assert f"exiting with status {128 + signum} for {signal.Signals(signum).name}" in err
    assert checkpoints(tmp_path) == ["iter_10.pth", f"iter_{AT}.pth"]
    assert load(tmp_path / f"iter_{AT}.pth")["meta"]["iter"] == AT
    assert json.loads((tmp_path / f".iter_{AT}.pth.json").read_text())["iter"] == AT  # the record: committed
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / f"iter_{AT}.pth")
    assert users_handler_calls(tmp_path) == [signum]  # ours chained to the handler installed before it

    before = signal.getsignal(signum)
    with resumed(tmp_path, at=AT):  # its first iteration is AT + 1
        runner = train(str(tmp_path), hook, resume=True)
    assert runner.iter == MAX_ITERS
    assert signal.getsignal(signum) is before  # the hook stopped listening when training ended
    assert_starts(tmp_path, 0, AT)
    resumed_state = torch.load(tmp_path / "final.pt", weights_only=True)
    torch.testing.assert_close(resumed_state["model"], uninterrupted["model"], rtol=0, atol=0)
    torch.testing.assert_close(resumed_state["optimizer"], uninterrupted["optimizer"], rtol=0, atol=0)


def test_exit_on_signal_false_saves_and_trains_on(tmp_path, uninterrupted):
    status, err = interrupt(tmp_path, signal.SIGTERM, save_on_signals=["SIGTERM"], exit_on_signal=False)
    assert status == 0, err
    assert checkpoints(tmp_path) == ["iter_10.pth", f"iter_{AT}.pth", "iter_20.pth", "iter_24.pth"]
    assert load(tmp_path / f"iter_{AT}.pth")["meta"]["iter"] == AT
    assert users_handler_calls(tmp_path) == [signal.SIGTERM]
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    assert final["iter"] == MAX_ITERS
    torch.testing.assert_close(final["model"], uninterrupted["model"], rtol=0, atol=0)  # the extra save changed nothing
    torch.testing.assert_close(final["optimizer"], uninterrupted["optimizer"], rtol=0, atol=0)


def test_two_ranks_save_and_exit_together_when_only_one_got_the_signal(tmp_path):
    """Two gloo ranks (mmengine's DistributedDataParallel on the CPU); SIGTERM to rank 1 only: both
    agree at the same iteration, rank 0 writes the checkpoint, both exit with 143 after its commit."""
    work_dir, init = tmp_path / "run", tmp_path / "init"
    launched = [launch(work_dir, dict(save_on_signals=["SIGTERM"]), "--rank", str(r), "--world-size", "2", "--init", str(init))
                for r in (0, 1)]
    try:
        ranks = [waiting(child) for child in launched]
        os.kill(ranks[1][0].pid, signal.SIGTERM)
        for child in launched:
            release(child)
        results = [finished(*rank) for rank in ranks]
    finally:
        for child in launched:
            child.kill()
    assert [status for status, _ in results] == [143, 143], "\n".join(output for _, output in results)
    assert checkpoints(work_dir) == ["iter_10.pth", f"iter_{AT}.pth"]
    assert load(work_dir / f"iter_{AT}.pth")["meta"]["iter"] == AT
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / f"iter_{AT}.pth")
    assert users_handler_calls(work_dir) == [signal.SIGTERM]  # rank 0 got no signal


def test_a_signal_at_a_periodic_save_saves_once(tmp_path, caplog):
    """SIGUSR1, sent from inside the loop at iteration 10, where the periodic save writes
    iter_10.pth: that checkpoint serves, no second save of it (exit_on_signal=False: trains on)."""
    from mmengine.hooks import Hook

    class SignalAt10(Hook):
        priority = "NORMAL"  # before the checkpoint hook at the same iteration

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 == 10:
                os.kill(os.getpid(), signal.SIGUSR1)

    with caplog.at_level("DEBUG", logger="trainer_ckpt"):
        runner = build_runner(str(tmp_path), dict(save_on_signals=["SIGUSR1"], exit_on_signal=False),
                              custom_hooks=[dict(type=SignalAt10)])
        runner.train()
    assert "got SIGUSR1; saving a checkpoint at this step" in caplog.text
    assert caplog.text.count("Saved checkpoint iter_10.pth") == 1
    assert caplog.text.count("Saved checkpoint iter_20.pth") == 1  # what the count above would be if it saved again: 2
    assert checkpoints(tmp_path) == ["iter_10.pth", "iter_20.pth", "iter_24.pth"]


@pytest.mark.parametrize("keywords, message", [
    (dict(save_on_signals="SIGTERM"), r"`save_on_signals` must be a list of signals, got 'SIGTERM'. Use e.g."),
    (dict(save_on_signals=["SIGKILL"]), r"`save_on_signals` holds SIGKILL, which no process can catch"),
    (dict(save_on_signals=["SIGNOPE"]), r"`save_on_signals` holds 'SIGNOPE', which is not a signal"),
    (dict(save_on_signals=["SIGTERM"], by_epoch=True), r"`save_on_signals` needs by_epoch=False .*, got by_epoch=True. "),
    (dict(exit_on_signal="yes"), r"`exit_on_signal` must be True or False, got 'yes'. Pass a bool."),
    (dict(max_host_memory=-1), r"`max_host_memory` must be a number of bytes \(an int >= 0\) or None, got -1. "),
    (dict(max_host_memory=1.5), r"`max_host_memory` must be a number of bytes \(an int >= 0\) or None, got 1.5. "),
])
def test_bad_values_are_refused_at_construction(keywords, message):
    keywords.setdefault("by_epoch", False)
    with pytest.raises(ValueError, match=r"^trainer_ckpt.mmengine.CheckpointHook: " + message):
        CheckpointHook(interval=1, **keywords)


def test_an_epoch_based_loop_is_refused_before_training(tmp_path):
    from scripts.mmengine_run import build_runner as build_epoch_based

    before = signal.getsignal(signal.SIGTERM)
    runner = build_epoch_based(str(tmp_path), dict(type=CheckpointHook, by_epoch=False, interval=1, save_on_signals=["SIGTERM"]),
                          max_epochs=1, val=False)
    with pytest.raises(ValueError, match=r"`save_on_signals` needs an iteration-based loop .*got EpochBasedTrainLoop"):
        runner.train()
    assert signal.getsignal(signal.SIGTERM) is before  # nothing installed


def test_max_host_memory_bounds_the_background_snapshot(tmp_path, caplog):
    """Over the bound, background saves write from the live tensors: no snapshot buffers are kept
    (tests/test_mmengine_face.py shows them kept without a bound)."""
    with caplog.at_level("INFO", logger="trainer_ckpt"):
        runner = train(str(tmp_path), dict(background=True, max_host_memory=1024))
    engine = next(h for h in runner.hooks if isinstance(h, CheckpointHook)).engine
    assert "over max_host_memory=1024: saving on the training thread from the live tensors instead" in caplog.text
    assert len(engine._snapshot._buffers) == 0
    assert checkpoints(tmp_path) == ["iter_10.pth", "iter_20.pth", "iter_24.pth"]
