"""
The engine's side of preemption (core.preemption, core.distributed): signal handlers that only
record, shared by every listener and put back by the last, chained to the one they replaced; a
forked child that takes the default action; a loop that saves at the step it was in and exits
with 128 + the signal; two gloo ranks that agree when only one got the signal; and the checkpoint
collectives' own group, which a slow save never makes the training group wait on. The faces' real
runs are in tests/test_preemption_<face>.py.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from trainer_ckpt.core import preemption
from trainer_ckpt.core.preemption import Preemption, parse


def run(script, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("value, message", [
    ("SIGTERM", "must be a list of signals, got 'SIGTERM'"),
    (["SIGFOO"], "holds 'SIGFOO', which is not a signal"),
    ([True], "holds True, which is not a signal"),
    ([9999], "holds 9999, which is not a signal"),
    (["KILL"], "holds SIGKILL, which no process can catch"),
])
def test_bad_signals_are_refused_with_the_fix(value, message):
    with pytest.raises(RuntimeError, match="Face: `save_on_signals` " + message.replace("(", r"\(").replace(")", r"\)")):
        parse("Face", "save_on_signals", value, error=RuntimeError)


def test_signals_by_name_or_number_once_each():
    assert parse("Face", "save_on_signals", ["SIGTERM", "usr1", int(signal.SIGUSR1), "TERM"]) == (signal.SIGTERM, signal.SIGUSR1)
    assert parse("Face", "save_on_signals", None) == ()


def test_handlers_are_shared_chained_and_put_back():
    called = []
    mine = signal.signal(signal.SIGUSR1, lambda signum, frame: called.append(signum))
    try:
        first, second = Preemption((signal.SIGUSR1,)), Preemption((signal.SIGUSR1, signal.SIGUSR2))
        installed = signal.getsignal(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert (first.received, second.received, called) == (signal.SIGUSR1, signal.SIGUSR1, [signal.SIGUSR1])
        assert first.requested() == signal.SIGUSR1 and first.requested() is None  # taken once
        first.close()
        assert signal.getsignal(signal.SIGUSR1) is installed  # the other listener still listens
        second.close()
        assert signal.getsignal(signal.SIGUSR1) is not installed and signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGUSR1)
        assert called == [signal.SIGUSR1, signal.SIGUSR1]  # the user's own handler is back
    finally:
        signal.signal(signal.SIGUSR1, mine)


def test_a_handler_installed_on_top_is_left_in_place_and_still_reaches_ours():
    later = []
    listener = Preemption((signal.SIGUSR2,))
    ours = signal.getsignal(signal.SIGUSR2)

    def framework(signum, frame):  # as Lightning's connector does: its own, then the one it found
        later.append(signum)
        ours(signum, frame)

    signal.signal(signal.SIGUSR2, framework)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert (later, listener.received) == ([signal.SIGUSR2], signal.SIGUSR2)
        listener.close()
        assert signal.getsignal(signal.SIGUSR2) is framework
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        preemption._INSTALLED.pop(signal.SIGUSR2, None)


def test_only_the_main_thread_may_listen():
    import threading

    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(ValueError, Preemption, (signal.SIGUSR1,), where="Face")))
    thread.start()
    thread.join()
    assert "Face: `save_on_signals` needs the main thread" in str(errors[0].value)


FORK = """
import os, signal, sys, time
from trainer_ckpt.core.preemption import Preemption
listener = Preemption((signal.SIGTERM,))
ready, started = os.pipe()
child = os.fork()
if child == 0:
    os.write(started, b"x")  # a signal that came before this would be dropped by CPython's after-fork reset
    time.sleep(30)
    os._exit(0)
os.read(ready, 1)
os.kill(child, signal.SIGTERM)
_, status = os.waitpid(child, 0)
print(os.WIFSIGNALED(status) and os.WTERMSIG(status))
"""


def test_a_forked_child_takes_the_default_action():
    result = run(FORK)
    assert result.stdout.strip() == str(int(signal.SIGTERM)), result.stderr


LOOP = """
import os, signal, sys, torch
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.core.preemption import Preemption, parse
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.stores.named import NamedFiles, FVCORE

directory, name, background, exit = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
engine = Engine(NamedFiles(directory, FVCORE), background=background)
listener = Preemption(parse("loop", "save_on_signals", [name]), exit=exit)
weights = torch.zeros(1000)
for step in range(10):
    weights += step  # the step
    if step == 4:
        os.kill(os.getpid(), getattr(signal, name))  # the scheduler's signal, mid-epoch
    signum = listener.requested()
    if signum:
        engine.save(f"model_{step:07d}", {"checkpoint": {"w": weights, "step": step}}, CheckpointInfo(0, step + 1, time=0.0))
        weights += 1000  # training goes on at once: the checkpoint keeps the step's values
        listener.finish(signum, engine.drain)
        print("went on after", step)
engine.close()
print("finished")
"""


@pytest.mark.parametrize("name, background", [("SIGTERM", False), ("SIGUSR1", True)])
def test_a_loop_saves_the_step_it_was_in_and_exits_with_128_plus_the_signal(tmp_path, name, background):
    import torch

    result = run(LOOP, tmp_path, name, int(background), 1)
    assert result.returncode == 128 + getattr(signal, name), result.stderr
    assert "finished" not in result.stdout
    assert sorted(p for p in os.listdir(tmp_path) if "lock" not in p) == [".model_0000004.pth.json", "model_0000004.pth"]
    saved = torch.load(tmp_path / "model_0000004.pth", weights_only=True)
    assert saved["step"] == 4 and torch.equal(saved["w"], torch.full((1000,), 10.0))  # 0+1+2+3+4
    record = json.loads((tmp_path / ".model_0000004.pth.json").read_text())
    assert record["files"]["checkpoint"]["size"] == os.path.getsize(tmp_path / "model_0000004.pth")


def test_exit_on_signal_false_goes_on_training(tmp_path):
    result = run(LOOP, tmp_path, "SIGTERM", 0, 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["went on after 4", "finished"]
    assert os.path.exists(tmp_path / ".model_0000004.pth.json")


RANKS = """
import os, signal, sys, datetime, torch, torch.distributed as dist
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
from trainer_ckpt.core.preemption import Preemption
listener = Preemption((signal.SIGTERM, signal.SIGUSR1))
for step in range(20):
    if rank == 1 and step == 6:
        os.kill(os.getpid(), signal.SIGUSR1)  # only this rank's node got it
    signum = listener.requested()
    if signum:
        open(out + str(rank), "w").write(f"{step} {signum}")
        listener.finish(signum, lambda: dist.barrier())
"""


def test_two_ranks_agree_when_only_one_got_the_signal(tmp_path):
    out = str(tmp_path / "saw")
    ranks = [subprocess.Popen([sys.executable, "-c", RANKS, str(r), str(tmp_path / "store"), out], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    codes = [p.wait(timeout=120) for p in ranks]
    assert codes == [128 + signal.SIGUSR1] * 2, [p.stderr.read() for p in ranks]
    assert [open(out + str(r)).read() for r in range(2)] == [f"6 {int(signal.SIGUSR1)}"] * 2


SLOW = """
import datetime, sys, time, torch, torch.distributed as dist
rank, store, on_world = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=2))
from trainer_ckpt.core import distributed
ours = distributed.group()
assert ours is not None and ours is not dist.group.WORLD and dist.get_backend(ours) == "gloo"
dist.barrier()
if rank == 0:
    time.sleep(4)  # a slow save, twice the training group's timeout
if on_world:  # the control: the same decision on the training group times out
    flag = torch.tensor([rank == 0], dtype=torch.uint8)
    dist.broadcast(flag, src=0)
    print("decided", bool(flag.item()))
else:
    print("decided", distributed.primary_decides(rank == 0))
"""


@pytest.mark.parametrize("on_world", [False, True])
def test_a_slow_save_waits_on_the_checkpoint_group_not_the_training_groups_timeout(tmp_path, on_world):
    ranks = [subprocess.Popen([sys.executable, "-c", SLOW, str(r), str(tmp_path / "store"), str(int(on_world))], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = [p.communicate(timeout=120) for p in ranks]
    if on_world:
        assert ranks[1].returncode != 0 and "imed out" in results[1][1], results[1]
    else:
        assert [p.returncode for p in ranks] == [0, 0], [r[1] for r in results]
        assert [r[0].strip() for r in results] == ["decided True"] * 2


def test_the_checkpoint_groups_timeout_is_checked(monkeypatch):
    from trainer_ckpt.io import group

    monkeypatch.setenv(group.TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ValueError, match="TRAINER_CKPT_COLLECTIVE_TIMEOUT must be a positive number of seconds, got 'soon'"):
        group.timeout()
    monkeypatch.setenv(group.TIMEOUT_VARIABLE, "90")
    assert group.timeout().total_seconds() == 90


def test_a_listener_after_ours_was_put_back_over_installs_again_without_looping():
    listener = Preemption((signal.SIGUSR2,))
    ours = signal.getsignal(signal.SIGUSR2)
    calls = []

    def framework(signum, frame):  # installed over ours, chaining to it, then put back over again
        calls.append(signum)
        ours(signum, frame)

    signal.signal(signal.SIGUSR2, framework)
    listener.close()  # ours is not the installed one: left in place under the framework's
    try:
        again = Preemption((signal.SIGUSR2,))
        assert signal.getsignal(signal.SIGUSR2) is not framework  # listening again: ours on top
        os.kill(os.getpid(), signal.SIGUSR2)  # ours -> framework's -> ours again: followed once
        assert (again.received, calls) == (signal.SIGUSR2, [signal.SIGUSR2])
        again.close()
        assert signal.getsignal(signal.SIGUSR2) is framework
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        preemption._INSTALLED.pop(signal.SIGUSR2, None)


FORKED_LISTENER = """
import os, signal, sys, time
import trainer_ckpt.core.preemption
from trainer_ckpt.core.preemption import Preemption
parent = Preemption((signal.SIGTERM,))
ready, started = os.pipe()
child = os.fork()
if child == 0:  # a process forked after the import builds its own checkpointer: it saves on the signal
    listener = Preemption((signal.SIGTERM,))
    os.write(started, b"x")
    for _ in range(3000):  # up to 30 s
        if listener.received is not None:
            break
        time.sleep(0.01)
    os._exit(7)
os.read(ready, 1)
os.kill(child, signal.SIGTERM)
_, status = os.waitpid(child, 0)
print(os.WIFEXITED(status) and os.WEXITSTATUS(status))
"""


def test_a_forked_process_that_listens_itself_gets_the_signal():
    result = run(FORKED_LISTENER)
    assert result.stdout.strip() == "7", result.stdout + result.stderr
