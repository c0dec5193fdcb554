"""Background saves: a consistent snapshot at call time, one save in flight, errors surface."""
import pytest
import torch

from tests.conftest import FakeTrainer, names, listing, saved
from trainer_ckpt import DefaultCheckpointer, KeepAll
from trainer_ckpt.io.loading import load

MIB = 1 << 20


def big_trainer(epoch, value, mib=32):
    weight = torch.full((mib * MIB // 4,), float(value))
    optimizer = {"state": {0: {"exp_avg": torch.full((1000,), float(value)), "step": torch.tensor(float(value))}},
                 "param_groups": [{"lr": 0.1 * value, "params": [0]}]}
    return FakeTrainer({"weight": weight}, {"epochs_completed": epoch, "batches_in_epoch_completed": 0, "optimizer": optimizer})


def test_the_file_holds_the_state_at_call_time_not_after(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, background=True)
    trainer = big_trainer(1, 1.0)
    assert checkpointer.maybe_save_checkpoint(trainer, 1, 0)
    # The optimizer steps right away, in place, while the worker may still be writing.
    trainer._model_state["weight"].add_(1.0)
    trainer._training_state["optimizer"]["state"][0]["exp_avg"].mul_(5.0)
    trainer._training_state["optimizer"]["param_groups"][0]["lr"] = 99.0
    checkpointer.wait()
    model = load(str(tmp_path / "model_state_e1_b0.th"))
    training = load(str(tmp_path / "training_state_e1_b0.th"))
    assert torch.equal(model["weight"], torch.full((8 * MIB,), 1.0))
    assert torch.equal(training["optimizer"]["state"][0]["exp_avg"], torch.full((1000,), 1.0))
    assert training["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)


def test_saves_in_quick_succession_reuse_buffers_safely(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, background=True, retention_policy=KeepAll())
    trainer = big_trainer(1, 1.0, mib=8)
    for e in (1, 2, 3):
        trainer._training_state["epochs_completed"] = e
        trainer._model_state["weight"].fill_(float(e))
        assert checkpointer.maybe_save_checkpoint(trainer, e, 0)  # waits for the previous one
    # find_latest waits for the save in flight: the trainer links best.th to what it returns.
    assert checkpointer.find_latest_checkpoint()[0].endswith("model_state_e3_b0.th")
    for e in (1, 2, 3):
        assert torch.equal(load(str(tmp_path / f"model_state_e{e}_b0.th"))["weight"], torch.full((2 * MIB,), float(e)))
    assert listing(tmp_path) == names((1, 0), (2, 0), (3, 0))


def test_a_background_failure_is_raised_at_the_next_call(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, background=True)
    checkpointer.save_checkpoint(big_trainer(1, 1.0, mib=1))
    broken = big_trainer(2, 2.0, mib=1)
    broken._training_state["unpicklable"] = lambda: None
    checkpointer.maybe_save_checkpoint(broken, 2, 0)  # returns; the worker fails
    checkpointer._engine._writer.wait()  # let it fail (without collecting the error)
    with pytest.raises(Exception, match="lambda|pickle"):
        checkpointer.maybe_save_checkpoint(big_trainer(2, 2.0, mib=1), 2, 5)
    assert saved(tmp_path) == [(1, 0)]
    checkpointer.maybe_save_checkpoint(big_trainer(3, 3.0, mib=1), 3, 0)
    checkpointer.wait()  # nothing pending, nothing failed
    assert saved(tmp_path) == [(1, 0), (3, 0)]


def test_wait_and_close_raise_a_pending_failure(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, background=True)
    broken = big_trainer(1, 1.0, mib=1)
    broken._training_state["unpicklable"] = lambda: None
    checkpointer.maybe_save_checkpoint(broken, 1, 0)
    with pytest.raises(Exception, match="lambda|pickle"):
        checkpointer.close()
    assert saved(tmp_path) == []


def test_not_saving_touches_no_disk(tmp_path, monkeypatch):
    import builtins
    import os

    checkpointer = DefaultCheckpointer(tmp_path, save_every_num_batches=50)
    checkpointer.save_checkpoint(big_trainer(0, 0.0, mib=1))

    def no_disk(*args, **kwargs):
        raise AssertionError("maybe_save_checkpoint touched the disk without saving")

    for name in ("scandir", "listdir", "stat", "lstat", "open", "replace", "remove"):
        monkeypatch.setattr(os, name, no_disk)
    monkeypatch.setattr(builtins, "open", no_disk)
    trainer = big_trainer(1, 1.0, mib=1)
    assert not any(checkpointer.maybe_save_checkpoint(trainer, 1, b) for b in range(1, 50))


def test_the_first_call_that_does_not_save_allocates_the_buffers_of_the_first_save(tmp_path):
    """Off the training thread: the first save then only copies into buffers that exist."""
    checkpointer = DefaultCheckpointer(tmp_path, background=True, save_every_num_batches=3, save_completed_epochs=False)
    assert not checkpointer.maybe_save_checkpoint(big_trainer(0, 1.0), 0, 1)
    checkpointer.wait()
    buffers = checkpointer._engine._snapshot._buffers
    ahead = {path: buffer.data_ptr() for path, buffer in buffers.items()}
    assert ("model_state", "weight") in ahead and ("training_state", "optimizer", "state", 0, "exp_avg") in ahead
    assert not checkpointer.maybe_save_checkpoint(big_trainer(0, 2.0), 0, 2)  # once only
    trainer = big_trainer(0, 3.0)
    trainer._training_state["batches_in_epoch_completed"] = 3
    assert checkpointer.maybe_save_checkpoint(trainer, 0, 3)
    checkpointer.wait()
    assert {path: buffers[path].data_ptr() for path in ahead} == ahead  # the first save filled those
    model_state, _ = checkpointer.load_checkpoint()
    assert torch.equal(model_state["weight"], trainer._model_state["weight"])
    checkpointer.close()
    assert not checkpointer._engine._snapshot._buffers  # released by close()


EXITS_RIGHT_AWAY = """
import sys, torch
from allennlp.training.trainer import TrainerCheckpoint
from trainer_ckpt import DefaultCheckpointer

class Trainer:
    def get_checkpoint_state(self):
        return TrainerCheckpoint({"w": torch.full((16 << 20,), 7.0)}, {"epochs_completed": 1, "batches_in_epoch_completed": 0})

DefaultCheckpointer(sys.argv[1], background=True).maybe_save_checkpoint(Trainer(), 1, 0)
sys.exit(0)  # with the 64 MB save still in flight
"""


def test_process_exit_waits_for_the_save_in_flight(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    child = subprocess.run([sys.executable, "-c", EXITS_RIGHT_AWAY, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert child.returncode == 0 and "background checkpoint save failed" not in child.stderr, child.stderr[-3000:]
    assert saved(tmp_path) == [(1, 0)], child.stderr[-3000:]
    model = DefaultCheckpointer(tmp_path, read_only=True).load_checkpoint().model_state
    assert torch.equal(model["w"], torch.full((16 << 20,), 7.0))
