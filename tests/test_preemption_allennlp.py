"""
`save_on_signals` in the AllenNLP face: real `allennlp train` subprocesses (the fixture's LSTM
classifier with dropout, shuffled batches, Adam and a learning-rate schedule; 2 epochs of 20
batches, saved every 5 batches) send themselves a real SIGTERM or SIGUSR1 at a chosen batch
(tests/preempt_allennlp_switch.py). Each exits with 128 + the signal's number, leaving a
checkpoint at that batch; `allennlp train --recover` resumes right after it (tests/_resume.py)
and ends bit-identical to an uninterrupted run. With exit_on_signal=false the run saves and
trains on. Bad values, the group's keys and max_host_memory are checked in-process. Eight
`allennlp train` processes (about 15 s of start-up each) make this file's runtime.
"""
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer

import trainer_ckpt.faces.allennlp  # noqa: F401 (registers "trainer_ckpt" and "trainer_ckpt_group")
from scripts.main_job import allennlp_train, checkpoint_files
from tests._resume import resumed, starts
from tests.conftest import ROOT, names

PACKAGES = ("trainer_ckpt", "kill_switch", "tests.preempt_allennlp_switch")  # kill_switch notes where runs start


def config(directory: Path, **checkpointer: Any) -> Path:
    """A config on the shipped fixture whose checkpointer block gets `checkpointer`'s keys."""
    block = {"type": "trainer_ckpt", "save_every_num_batches": 5, "keep_most_recent_by_count": 3,
             "save_on_signals": ["SIGTERM", "SIGUSR1"], **checkpointer}
    path = directory / "preempt.jsonnet"
    path.write_text(f"""
local base = import "{ROOT}/training_configs/base.libsonnet";
base + {{ trainer+: {{
  num_epochs: 2,
  learning_rate_scheduler: {{ type: "slanted_triangular" }},
  checkpointer: {json.dumps(block)},
  callbacks: [{{ type: "kill_switch" }}, {{ type: "preempt_switch" }}],
}} }}
""")
    return path


def final_states(out: Path) -> Dict[str, Any]:
    """What must match after training: weights, optimizer, schedule, metric tracker, best.th."""
    training = torch.load(out / "training_state_e2_b0.th", weights_only=True)
    return {"model": torch.load(out / "model_state_e2_b0.th", weights_only=True),
            "training": {k: training[k] for k in ("optimizer", "learning_rate_scheduler", "metric_tracker")},
            "best": torch.load(out / "best.th", weights_only=True)}


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Nested states equal: tensors bit for bit (assert_close with rtol=0, atol=0), the rest with ==."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} vs {b!r}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{where}: {m}")
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} vs {b!r}"


def finished(out: Path, run) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    finished(out / "run", allennlp_train(config(out), out / "run", packages=PACKAGES))
    return final_states(out / "run")


CASES = {  # name: (signal, where it is sent, checkpointer keys, the checkpoints on disk at the exit)
    "sigterm_mid_epoch": ("SIGTERM", (1, 7), {}, [(1, 0), (1, 5), (1, 7)]),
    # At an epoch end (where a periodic save falls too: one save), with a handler of the user's.
    "sigusr1_at_an_epoch_end": ("SIGUSR1", (1, 0), {}, [(0, 15), (0, 20), (1, 0)]),
    "sigterm_background": ("SIGTERM", (1, 12), {"background": True, "max_host_memory": 2**30}, [(1, 5), (1, 10), (1, 12)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_signal_saves_where_training_is_exits_and_recover_is_bit_identical(tmp_path, uninterrupted, name):
    signal_name, at, keys, on_disk = CASES[name]
    out, handled = tmp_path / "run", tmp_path / "user_handler.txt"
    env = {"TRAINER_CKPT_SIGNAL": f"{signal_name}@{at[0]}:{at[1]}",
           "TRAINER_CKPT_USER_HANDLER": f"SIGUSR1:{handled}"}
    path = config(tmp_path, **keys)
    run = allennlp_train(path, out, packages=PACKAGES, env=env)

    signum = getattr(signal, signal_name)
    assert run.returncode == 128 + signum, run.stderr[-3000:]  # 143 for SIGTERM, 138 for SIGUSR1
    log = (out / "out.log").read_text()
    assert f"got {signal_name}; saving a checkpoint at this step, then exiting" in log
    assert checkpoint_files(out) == names(*on_disk)
    record = json.loads((out / f"checkpoint_e{at[0]}_b{at[1]}.json").read_text())
    assert (record["epochs_completed"], record["batches_in_epoch_completed"]) == at, record
    saved = torch.load(out / f"training_state_e{at[0]}_b{at[1]}.th", weights_only=True)
    assert (saved["epochs_completed"], saved["batches_in_epoch_completed"]) == at
    # The user's SIGUSR1 handler, installed before the checkpointer, was still called.
    calls = handled.read_text().split() if handled.exists() else []
    assert calls == ([str(signum)] if signum == signal.SIGUSR1 else [])
    if at[1] == 0:  # the exit waited until the trainer had linked best.th to the epoch-end checkpoint
        torch.testing.assert_close(torch.load(out / "best.th", weights_only=True),
                                   torch.load(out / "model_state_e1_b0.th", weights_only=True), rtol=0, atol=0)

    with resumed(out, at=at):  # the first batch trained is the one after the checkpoint
        finished(out, allennlp_train(path, out, recover=True, packages=PACKAGES))
    assert f"Restoring checkpoint e{at[0]}_b{at[1]}" in (out / "out.log").read_text()
    assert_identical(final_states(out), uninterrupted)


def test_exit_on_signal_false_saves_and_trains_on(tmp_path, uninterrupted):
    out = tmp_path / "run"
    path = config(tmp_path, exit_on_signal=False, keep_most_recent_by_count=None)
    run = allennlp_train(path, out, packages=PACKAGES, env={"TRAINER_CKPT_SIGNAL": "SIGTERM@1:7"})
    finished(out, run)
    assert starts(out) == {0: [(0, 0)]}  # one process, from the start to the end
    assert "got SIGTERM; saving a checkpoint at this step\n" in (out / "out.log").read_text()
    # As any save, the one for the signal restarts the count of save_every_num_batches: 5, 7, 12, 17.
    points = [(0, 5), (0, 10), (0, 15), (0, 20), (1, 0), (1, 5), (1, 7), (1, 12), (1, 17), (2, 0)]
    assert checkpoint_files(out) == names(*points)
    assert_identical(final_states(out), uninterrupted)


BAD = [
    ({"save_on_signals": "SIGTERM"}, "`save_on_signals` must be a list of signals, got 'SIGTERM'."),
    ({"save_on_signals": ["SIGTERM", "SIGKILL"]}, "`save_on_signals` holds SIGKILL, which no process can catch."),
    ({"save_on_signals": ["TERMINATE"]}, "`save_on_signals` holds 'TERMINATE', which is not a signal."),
    ({"save_on_signals": [3.5]}, "`save_on_signals` holds 3.5, which is not a signal."),
    ({"exit_on_signal": "yes"}, "`exit_on_signal` must be true or false, got 'yes'. Use a JSON boolean."),
    ({"max_host_memory": -1}, "`max_host_memory` must be a number of bytes (an int >= 0) or null, got -1."),
    ({"max_host_memory": "8GB"}, "`max_host_memory` must be a number of bytes (an int >= 0) or null, got '8GB'."),
    ({"max_host_memory": True}, "`max_host_memory` must be a number of bytes (an int >= 0) or null, got True."),
]


@pytest.mark.parametrize("keys, message", BAD)
def test_bad_values_are_refused_at_construction(tmp_path, keys, message):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(ConfigurationError) as error:
        AllenNlpCheckpointer.from_params(Params({"type": "trainer_ckpt", **keys}), serialization_dir=str(tmp_path))
    assert str(error.value).startswith("trainer_ckpt checkpointer: " + message), str(error.value)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # nothing left installed


def test_the_group_takes_the_keys_and_refuses_them_in_members(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    group = AllenNlpCheckpointer.from_params(
        Params({"type": "trainer_ckpt_group", "save_on_signals": ["SIGUSR1"],
                "checkpointers": [{"save_every_num_batches": 5}, {"filename_prefix": "best_"}]}),
        serialization_dir=str(tmp_path / "a"))
    assert signal.getsignal(signal.SIGUSR1) is not before  # listening
    group.close()
    assert signal.getsignal(signal.SIGUSR1) is before
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ConfigurationError, match=r"group: `save_on_signals` belongs to the group, got it in checkpointers \[1\]\."):
        AllenNlpCheckpointer.from_params(
            Params({"type": "trainer_ckpt_group",
                    "checkpointers": [{}, {"filename_prefix": "best_", "save_on_signals": ["SIGTERM"]}]}),
            serialization_dir=str(tmp_path / "b"))
    assert signal.getsignal(signal.SIGTERM) is before  # the member that listened stopped


def test_max_host_memory_reaches_the_engine(tmp_path, caplog):
    """A background save whose snapshot would exceed the bound is written on the calling thread."""
    from tests.conftest import saved, trainer_at
    from trainer_ckpt import DefaultCheckpointer

    checkpointer = DefaultCheckpointer(tmp_path, background=True, max_host_memory=8)
    with caplog.at_level(logging.INFO, logger="trainer_ckpt"):
        checkpointer.save_checkpoint(trainer_at(1, 0))
        assert saved(tmp_path) == [(1, 0)]  # committed before the call returned: no wait()
    checkpointer.close()
    assert "over max_host_memory=8: saving on the training thread from the live tensors instead" in caplog.text


def test_the_group_saves_every_member_at_the_signal_then_exits(tmp_path):
    from tests.conftest import saved, trainer_at

    group = AllenNlpCheckpointer.from_params(
        Params({"type": "trainer_ckpt_group", "save_on_signals": ["SIGUSR1"],
                "checkpointers": [{"save_every_num_batches": 5}, {"filename_prefix": "best_", "save_completed_epochs": False}]}),
        serialization_dir=str(tmp_path))
    try:
        assert group.maybe_save_checkpoint(trainer_at(1, 3), 1, 3) is False  # neither policy saves at batch 3
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(SystemExit) as exit:
            group.maybe_save_checkpoint(trainer_at(1, 4), 1, 4)
        assert exit.value.code == 128 + signal.SIGUSR1
        assert saved(tmp_path) == [(1, 4)] and saved(tmp_path, "best_") == [(1, 4)]
    finally:
        group.close()
