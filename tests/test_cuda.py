"""
The CUDA paths, run where CUDA is present: snapshots through reused pinned buffers for background
and synchronous saves (allocated ahead, by the first step that does not save), copies ordered
after the training step on the current stream of every device, the random state of every
device, and a SIGKILLed CUDA run with background saves resumed bit-exact.
"""
import os
import signal

import pytest
import torch
from torch import nn

from scripts.plain_loop import final_state, run
from tests._resume import resumed
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer
from trainer_ckpt.core.rng import capture_rng, restore_rng

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA paths need a CUDA device")


def trained(device="cuda"):
    model = nn.Sequential(nn.Linear(256, 256), nn.Dropout(0.1), nn.Linear(256, 4)).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 256, device=device)).sum().backward()
    optimizer.step()
    return model, optimizer


def assert_file_holds(path, model):
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(saved[key], value.cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("background", [False, True])
def test_saves_of_cuda_state_go_through_pinned_buffers_allocated_ahead_and_reused(tmp_path, background):
    model, optimizer = trained()
    checkpointer = Checkpointer(model, str(tmp_path), background=background, optimizer=optimizer)
    periodic = PeriodicCheckpointer(checkpointer, period=3)
    periodic.step(0)  # does not save: allocates the pinned buffers on the worker thread
    checkpointer.wait()
    buffers = checkpointer.engine._snapshot._buffers
    ahead = {path: buffer.data_ptr() for path, buffer in buffers.items()}
    assert ("checkpoint", "model", "0.weight") in ahead and ("checkpoint", "optimizer", "state", 0, "exp_avg") in ahead
    assert all(buffers[path].is_pinned() for path in ahead if path[-1] != "step")
    # Adam's step counts live on the CPU: a synchronous save writes them as they are, without a copy.
    assert (("checkpoint", "optimizer", "state", 0, "step") in ahead) is background
    periodic.step(1)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    periodic.step(2)  # saves model_0000002 from those buffers
    checkpointer.wait()
    assert {path: buffers[path].data_ptr() for path in ahead} == ahead
    assert_file_holds(tmp_path / "model_0000002.pth", model)
    for i in range(3, 6):
        periodic.step(i)
    checkpointer.wait()
    assert {path: buffers[path].data_ptr() for path in ahead} == ahead  # the second save: the same buffers
    assert_file_holds(tmp_path / "model_0000005.pth", model)


def test_a_background_save_holds_the_values_of_its_call_not_of_later_steps(tmp_path):
    """The device-to-host copies are asynchronous: `save` returns once they are done."""
    model, optimizer = trained()
    checkpointer = Checkpointer(model, str(tmp_path), background=True, optimizer=optimizer)
    expected = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    big = torch.randn(4096, 4096, device="cuda")
    for _ in range(3):  # queue device work before the save, so the copies have something to wait for
        big = torch.tanh(big @ big / 64)
    with torch.no_grad():
        model[0].weight.add_(big[:256, :256].sum() * 0)  # ordered after the matmuls on the stream
    checkpointer.save("model_x")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # the next step, while the save is written
    checkpointer.wait()
    saved = torch.load(tmp_path / "model_x.pth", map_location="cpu", weights_only=True)["model"]
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_state_on_two_devices_is_copied_from_each_devices_stream(tmp_path):
    first = nn.Linear(64, 64).to("cuda:0")
    second = nn.Linear(64, 64).to("cuda:1")
    model = nn.ModuleDict({"a": first, "b": second})
    checkpointer = Checkpointer(model, str(tmp_path), background=True)
    checkpointer.save("model_two")
    checkpointer.wait()
    assert_file_holds(tmp_path / "model_two.pth", model)


def test_the_random_state_of_every_device_goes_back():
    torch.cuda.manual_seed_all(7)
    state = capture_rng()
    assert len(state["cuda"]) == torch.cuda.device_count()
    drawn = [torch.rand(5, device=f"cuda:{d}") for d in range(torch.cuda.device_count())]
    restore_rng(state)
    again = [torch.rand(5, device=f"cuda:{d}") for d in range(torch.cuda.device_count())]
    for a, b in zip(drawn, again):
        assert torch.equal(a, b)


def test_sigkill_and_resume_on_cuda_with_background_saves_is_bit_exact(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run(str(full), device="cuda", background=True) == 0
    assert run(str(cut), kill_at=37, device="cuda", background=True) == -signal.SIGKILL
    assert not os.path.exists(cut / "model_final.pth")
    # Saves every 5 iterations, in the background: the one after iteration 34 may still have been
    # in flight at the kill. The resumed run starts after the newest on disk.
    newest = max(int(p.stem[len("model_"):]) for p in cut.glob("model_*.pth"))
    assert newest in (29, 34), newest
    with resumed(cut, at=newest + 1):
        assert run(str(cut), device="cuda", background=True) == 0
    a, b = final_state(str(full)), final_state(str(cut))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for p in a["optimizer"]["state"]:
        for name, value in a["optimizer"]["state"][p].items():
            assert torch.equal(value, b["optimizer"]["state"][p][name]), (p, name)
