"""
`max_host_memory`: the snapshot buffers of background saves stay under the bound. A state whose
snapshot fits is saved in the background as before; a larger one is saved on the training thread
from the live tensors (no buffers at all), and its checkpoint holds the state at the save. The
peak memory of each mode is measured by scripts/bench_memory.py.
"""
import logging

import pytest
import torch

from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine, snapshot_bytes
from trainer_ckpt.stores.named import FVCORE, MAIN, NamedFiles

STATE_BYTES = 4 * 4096 * 4 + 4096 * 4  # the fp32 tensors of `state()`


def state():
    return {"model": {"a": torch.arange(4 * 4096, dtype=torch.float32), "b": torch.ones(4096)}, "step": 3, "rng": [1, 2, 3]}


def engine(tmp_path, **kwargs):
    return Engine(NamedFiles(str(tmp_path), FVCORE), background=True, **kwargs)


def save(e, name, s):
    return e.save(name, {MAIN: s}, CheckpointInfo(0, 1, time=0.0))


def test_snapshot_bytes_counts_the_tensors_a_snapshot_copies():
    assert snapshot_bytes(state()) == STATE_BYTES
    assert snapshot_bytes(state(), devices_only=True) == 0  # CPU tensors: nothing to stage for a synchronous save


def test_a_state_that_fits_is_snapshotted_as_before(tmp_path):
    e = engine(tmp_path, max_host_memory=STATE_BYTES)
    s = state()
    save(e, "model_0000000", s)
    assert e.host_memory == STATE_BYTES  # the buffers, kept for the next save
    e.close()


@pytest.mark.parametrize("bound", [0, STATE_BYTES - 1])
def test_a_larger_state_is_saved_from_the_live_tensors_with_no_buffers(tmp_path, caplog, bound):
    e = engine(tmp_path, max_host_memory=bound)
    s = state()
    with caplog.at_level(logging.INFO, logger="trainer_ckpt"):
        e.prepare({MAIN: s})  # would allocate the buffers ahead of the first save
        save(e, "model_0000000", s)
    assert e.host_memory == 0
    assert not e._writer.busy  # nothing left to write: the save was done on this thread
    s["model"]["a"] += 1  # training goes on: the checkpoint has the values of the save
    e.close()
    loaded = torch.load(tmp_path / "model_0000000.pth", weights_only=True)
    torch.testing.assert_close(loaded["model"]["a"], torch.arange(4 * 4096, dtype=torch.float32), rtol=0, atol=0)
    assert f"takes {STATE_BYTES} bytes, over max_host_memory={bound}" in caplog.text


def test_buffers_of_earlier_saves_are_let_go_once_the_state_outgrows_the_bound(tmp_path):
    e = engine(tmp_path, max_host_memory=STATE_BYTES)
    save(e, "model_0000000", state())
    assert e.host_memory == STATE_BYTES
    bigger = state()
    bigger["model"]["c"] = torch.zeros(10)
    save(e, "model_0000001", bigger)
    assert e.host_memory == 0
    e.close()
    torch.testing.assert_close(torch.load(tmp_path / "model_0000001.pth", weights_only=True)["model"]["c"], torch.zeros(10),
                               rtol=0, atol=0)


@pytest.mark.parametrize("bound", [-1, 1.5, True, "8G"])
def test_a_bad_bound_is_refused_with_the_fix(tmp_path, bound):
    with pytest.raises(ValueError, match=r"where: `max_host_memory` must be a number of bytes \(an int >= 0\) or None, got "):
        Engine(NamedFiles(str(tmp_path), FVCORE), max_host_memory=bound, where="where")
