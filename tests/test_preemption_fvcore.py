"""
Saving on the scheduler's signal, through trainer_ckpt.fvcore: a plain fvcore loop
(tests/preempt_fvcore_loop.py) in a real subprocess, sent a real SIGTERM or SIGUSR1 by this test
(os.kill) while it waits after a known iteration, saves that iteration's checkpoint as a periodic
save would, exits with 128 + the signal's number, and resumes at the next iteration, ending
bit-identical to an uninterrupted run. Also on 2 gloo ranks with the signal sent to one rank only.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from torch import nn

from scripts.plain_loop import final_state
from tests._resume import assert_same_state as assert_same_nested, resumed
from tests.conftest import ROOT
from trainer_ckpt import SaveEveryNumBatches
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

LOOP = str(ROOT / "tests" / "preempt_fvcore_loop.py")
TIMEOUT = 120
PAUSE_AT = 7  # between the periodic saves after iterations 4 and 9 (period 5)


def start(out: Path, *options: str, rank: Optional[int] = None, init: str = "") -> subprocess.Popen:
    """The loop in a new process; its stderr (the checkpoint messages) goes to OUT/stderr[.R]."""
    out.mkdir(exist_ok=True)
    command = [sys.executable, LOOP, str(out), *options]
    if rank is not None:
        command += ["--rank", str(rank), "--init", init]
    log = open(out / ("stderr" if rank is None else f"stderr.{rank}"), "a")
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                               text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    log.close()
    return process


def interrupt(process: subprocess.Popen, signum: int, at: int = PAUSE_AT) -> None:
    """Once the loop waits after iteration `at`, sends it `signum`, then lets it go on."""
    line = process.stdout.readline().strip()
    assert line == f"paused {at}", f"the loop said {line!r}, exit status {process.wait(timeout=TIMEOUT)}"
    os.kill(process.pid, signum)
    process.stdin.write("go\n")
    process.stdin.flush()


def finish(processes: List[subprocess.Popen]) -> List[int]:
    """The exit statuses; a process still running after TIMEOUT (a rank waiting for the other) is killed."""
    try:
        for process in processes:
            process.stdin.close()
            process.wait(timeout=TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [process.returncode for process in processes]


def assert_same_state(a: dict, b: dict) -> None:
    """Every weight and optimizer tensor equal, and where the data and the loop were."""
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for p in sa:
        for name in sa[p]:
            torch.testing.assert_close(sa[p][name], sb[p][name], rtol=0, atol=0)
    assert_same_nested(a["loader"], b["loader"], "loader")
    assert a["iteration"] == b["iteration"]


def assert_saved_at(out: Path, iteration: int) -> None:
    """The preemption's checkpoint is a periodic one: its name, record, pointer and retention."""
    name = f"model_{iteration:07d}.pth"
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000004.pth", name]  # max_to_keep=2
    assert (out / f".{name}.json").exists() and (out / "last_checkpoint").read_text() == name
    saved = torch.load(out / name, weights_only=True)
    assert saved["iteration"] == iteration and saved["loader"]["_num_yielded"] == iteration % 13 + 1  # 13 batches an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("full")
    assert finish([start(out)]) == [0]
    return final_state(str(out))


# SIGTERM without background saves: the test on 2 ranks.
@pytest.mark.parametrize("signum, options", [
    (signal.SIGTERM, ["--background"]),
    (signal.SIGUSR1, ["--user-handler"]),  # which is still called
], ids=["SIGTERM-background", "SIGUSR1-user_handler"])
def test_a_signal_saves_at_the_iteration_exits_and_resumes_bit_exact(tmp_path, uninterrupted, signum, options):
    process = start(tmp_path, "--pause-at", str(PAUSE_AT), *options)
    interrupt(process, signum)
    assert finish([process]) == [128 + signum]
    assert not (tmp_path / "model_final.pth").exists()
    assert_saved_at(tmp_path, PAUSE_AT)
    if "--user-handler" in options:
        assert (tmp_path / "user_handler.log").read_text() == f"{int(signum)}\n"
    with resumed(tmp_path, at=PAUSE_AT + 1):
        assert finish([start(tmp_path, *options)]) == [0]
    assert_same_state(final_state(str(tmp_path)), uninterrupted)


def test_background_over_max_host_memory_saves_on_the_training_thread(tmp_path):
    process = start(tmp_path, "--pause-at", str(PAUSE_AT), "--background", "--max-host-memory", "1024")
    interrupt(process, signal.SIGTERM)
    assert finish([process]) == [128 + signal.SIGTERM]
    assert_saved_at(tmp_path, PAUSE_AT)
    assert "over max_host_memory=1024: saving on the training thread" in (tmp_path / "stderr").read_text()


def test_two_gloo_ranks_save_at_the_same_iteration_when_one_is_signalled(tmp_path, uninterrupted):
    ranks = [start(tmp_path, "--pause-at", str(PAUSE_AT), "--pause-rank", "1", rank=r, init=f"file://{tmp_path}/store")
             for r in range(2)]
    interrupt(ranks[1], signal.SIGTERM)  # rank 0 gets no signal
    assert finish(ranks) == [128 + signal.SIGTERM] * 2
    assert_saved_at(tmp_path, PAUSE_AT)  # rank 0 wrote it, at the iteration rank 1 was signalled in
    with resumed(tmp_path, at=PAUSE_AT + 1, ranks=2):
        resumes = [start(tmp_path, rank=r, init=f"file://{tmp_path}/store_resume") for r in range(2)]
        assert finish(resumes) == [0, 0]
    # Both ranks train on the same batches, so DDP's mean of their two equal gradients is exact: an
    # uninterrupted run on 2 ranks ends where the one-process run ends (a rank that had not resumed
    # would pull the mean, and rank 0's final weights, elsewhere).
    assert_same_state(final_state(str(tmp_path)), uninterrupted)


def _periodic(tmp_path, **kwargs) -> PeriodicCheckpointer:
    return PeriodicCheckpointer(Checkpointer(nn.Linear(2, 2), str(tmp_path)), period=5, **kwargs)


@pytest.mark.parametrize("kwargs, error", [
    ({"save_on_signals": "SIGTERM"}, r"`save_on_signals` must be a list of signals, got 'SIGTERM'\. Use e\.g\. "),
    ({"save_on_signals": ["SIGTREM"]}, r"`save_on_signals` holds 'SIGTREM', which is not a signal\. "),
    ({"save_on_signals": [signal.SIGKILL]}, r"`save_on_signals` holds SIGKILL, which no process can catch\. "),
    ({"exit_on_signal": "no"}, r"`exit_on_signal` must be True or False, got 'no'\. Pass a bool\."),
])
def test_bad_preemption_arguments_are_refused_at_construction(tmp_path, kwargs, error):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match=r"^trainer_ckpt\.fvcore\.PeriodicCheckpointer: " + error):
        _periodic(tmp_path, **kwargs)
    assert signal.getsignal(signal.SIGTERM) is before


def test_bad_max_host_memory_is_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"^trainer_ckpt\.fvcore\.Checkpointer: `max_host_memory` must be a number of "
                                         r"bytes \(an int >= 0\) or None, got -1\. Use e\.g\. "):
        Checkpointer(nn.Linear(2, 2), str(tmp_path), background=True, max_host_memory=-1)


def test_a_plain_fvcore_checkpointer_cannot_save_on_signals(tmp_path):
    from fvcore.common.checkpoint import Checkpointer as FvcoreCheckpointer

    with pytest.raises(ValueError, match=r"^trainer_ckpt\.fvcore\.PeriodicCheckpointer: `save_on_signals` needs a "
                                         r"trainer_ckpt\.fvcore\.Checkpointer, got Checkpointer\. "):
        PeriodicCheckpointer(FvcoreCheckpointer(nn.Linear(2, 2), str(tmp_path)), period=5, save_on_signals=["SIGTERM"])


def test_the_last_step_and_close_put_the_previous_handler_back(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    periodic = _periodic(tmp_path, max_iter=3, save_on_signals=["SIGUSR1"])
    assert signal.getsignal(signal.SIGUSR1) is not before
    for iteration in range(3):
        periodic.step(iteration)
    assert signal.getsignal(signal.SIGUSR1) is before
    _periodic(tmp_path / "other", save_on_signals=["SIGUSR1"]).close()
    assert signal.getsignal(signal.SIGUSR1) is before


def _saves(caplog) -> List[str]:
    """The files fvcore's messages say were saved, in order."""
    return [r.getMessage().rsplit("/", 1)[-1] for r in caplog.records if r.getMessage().startswith("Saving checkpoint")]


@pytest.fixture
def usr1_calls():
    """A SIGUSR1 handler of the user's, installed before the checkpointer (and put back after): the signals it got."""
    calls: List[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("policy, signalled, expected", [
    (None, (7, 9), [4, 7, 9, 14]),  # period=5; the signal at 9 saves nothing more
    (SaveEveryNumBatches(5), (7,), [4, 7, 12]),  # the policy counts from the signal's save, as a run resumed from it would
], ids=["period", "save_policy"])
def test_exit_on_signal_false_saves_once_at_the_iteration_and_trains_on(tmp_path, caplog, usr1_calls, policy, signalled,
                                                                        expected):
    model = nn.Linear(2, 2)
    checkpointer = Checkpointer(model, str(tmp_path))
    periodic = PeriodicCheckpointer(checkpointer, period=None if policy else 5, save_policy=policy, max_iter=15,
                                    save_on_signals=["SIGUSR1"], exit_on_signal=False)
    caplog.set_level("INFO", logger="fvcore.common.checkpoint")
    for iteration in range(15):
        with torch.no_grad():
            model.bias.fill_(iteration)
        if iteration in signalled:
            os.kill(os.getpid(), signal.SIGUSR1)
        periodic.step(iteration)
    assert _saves(caplog) == [f"model_{i:07d}.pth" for i in expected] + ["model_final.pth"]
    saved = torch.load(tmp_path / "model_0000007.pth", weights_only=True)
    assert saved["iteration"] == 7 and torch.equal(saved["model"]["bias"], torch.full((2,), 7.0))
    assert usr1_calls == [signal.SIGUSR1] * len(signalled)  # chained
