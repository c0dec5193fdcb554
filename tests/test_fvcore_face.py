"""
trainer_ckpt.fvcore against fvcore 0.1.5's own tests of Checkpointer and PeriodicCheckpointer
(tests/test_checkpoint.py in facebookresearch/fvcore, adapted: pytest, tmp_path), interop with the
real fvcore both ways, and what fvcore lacks: verified resume with fallback, safe loading,
background saves, retention across restarts, policies.
"""
import copy
import logging
import os
import random
import string
import subprocess
import sys

import pytest
import torch
from fvcore.common import checkpoint as fvcore_checkpoint
from torch import nn

from tests.conftest import ROOT
from trainer_ckpt import KeepAny, KeepEveryNumBatches, KeepMostRecentByCount, SaveEveryNumBatches
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer


def _create_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


PAIRS = [
    lambda: (_create_model(), _create_model()),
    lambda: (nn.DataParallel(_create_model()), _create_model()),
    lambda: (_create_model(), nn.DataParallel(_create_model())),
    lambda: (nn.DataParallel(_create_model()), nn.DataParallel(_create_model())),
]


def _same_parameters(trained_model, fresh_model):
    for trained_p, loaded_p in zip(trained_model.parameters(), fresh_model.parameters()):
        assert id(trained_p) != id(loaded_p)
        assert torch.equal(trained_p.cpu(), loaded_p.cpu())


# ---- fvcore's TestCheckpointer, adapted --------------------------------------------------------

@pytest.mark.parametrize("pair", PAIRS)
def test_from_last_checkpoint_model(tmp_path, pair):
    trained_model, fresh_model = pair()
    f = str(tmp_path)
    checkpointer = Checkpointer(trained_model, save_dir=f)
    checkpointer.save("checkpoint_file")
    fresh_checkpointer = Checkpointer(fresh_model, save_dir=f)
    assert fresh_checkpointer.has_checkpoint()
    assert fresh_checkpointer.get_checkpoint_file() == os.path.join(f, "checkpoint_file.pth")
    fresh_checkpointer.load(fresh_checkpointer.get_checkpoint_file())
    _same_parameters(trained_model, fresh_model)


@pytest.mark.parametrize("pair", PAIRS)
def test_from_name_file_model(tmp_path, pair):
    trained_model, fresh_model = pair()
    f, g = tmp_path / "f", tmp_path / "g"
    checkpointer = Checkpointer(trained_model, save_dir=str(f), save_to_disk=True)
    checkpointer.save("checkpoint_file")
    g.mkdir()
    fresh_checkpointer = Checkpointer(fresh_model, save_dir=str(g))
    assert not fresh_checkpointer.has_checkpoint()
    assert fresh_checkpointer.get_checkpoint_file() == ""
    fresh_checkpointer.load(os.path.join(f, "checkpoint_file.pth"))
    _same_parameters(trained_model, fresh_model)


class CheckpointableObj:
    """fvcore's dummy checkpointable: a dict of random strings."""

    def __init__(self):
        letters = string.ascii_uppercase
        self.state = {"".join(random.choice(letters) for _ in range(100)): "".join(random.choice(letters) for _ in range(100)) for _ in range(10)}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state) -> None:
        self.state = copy.deepcopy(state)


def test_checkpointables(tmp_path):
    trained_model, fresh_model = _create_model(), _create_model()
    f = str(tmp_path)
    checkpointables = CheckpointableObj()
    checkpointer = Checkpointer(trained_model, save_dir=f, save_to_disk=True, checkpointables=checkpointables)
    checkpointer.save("checkpoint_file")
    fresh_checkpointer = Checkpointer(fresh_model, save_dir=f)
    assert fresh_checkpointer.has_checkpoint()
    assert fresh_checkpointer.get_checkpoint_file() == os.path.join(f, "checkpoint_file.pth")
    checkpoint = fresh_checkpointer.load(fresh_checkpointer.get_checkpoint_file())
    state_dict = checkpointables.state_dict()
    for key in state_dict:
        assert checkpoint["checkpointables"].get(key) is not None
        assert checkpoint["checkpointables"][key] == state_dict[key]


def test_load_reused_params(caplog):
    class Model(nn.Module):
        def __init__(self, has_y: bool) -> None:
            super().__init__()
            self.x = nn.Linear(10, 10)
            if has_y:
                self.y = self.x

    model = Model(has_y=False)
    model.x.bias.data.fill_(5.0)
    data = {"model": model.state_dict()}
    new_model = Model(has_y=True)
    chkpt = Checkpointer(new_model)
    with caplog.at_level(logging.INFO):
        incompatible = chkpt._load_model(data)
        chkpt._log_incompatible_keys(incompatible)
    assert torch.allclose(new_model.y.bias - 5.0, torch.zeros_like(new_model.y.bias))
    assert caplog.records == []


def test_load_lazy_module(tmp_path):
    m1, m2 = nn.Sequential(nn.LazyLinear(10)), nn.Sequential(nn.LazyLinear(10))
    m1(torch.randn(4, 2, 4, 4))  # initialize m1, but not m2
    f = str(tmp_path)
    Checkpointer(m1, save_dir=f).save("checkpoint_file")
    fresh_checkpointer = Checkpointer(m2, save_dir=f)
    assert fresh_checkpointer.has_checkpoint()
    assert fresh_checkpointer.get_checkpoint_file() == os.path.join(f, "checkpoint_file.pth")
    fresh_checkpointer.load(fresh_checkpointer.get_checkpoint_file())
    assert torch.equal(m1[0].weight, m2[0].weight)


# ---- fvcore's TestPeriodicCheckpointer, adapted ------------------------------------------------

@pytest.mark.parametrize("make", [_create_model, lambda: nn.DataParallel(_create_model())])
def test_periodic_checkpointer(tmp_path, make):
    f = str(tmp_path)
    checkpointer = Checkpointer(make(), save_dir=f, save_to_disk=True)
    periodic_checkpointer = PeriodicCheckpointer(checkpointer, 10, 99)
    for iteration in range(100):
        periodic_checkpointer.step(iteration)
        path = os.path.join(f, "model_{:07d}.pth".format(iteration))
        assert os.path.exists(path) == ((iteration + 1) % 10 == 0)
    assert os.path.exists(os.path.join(f, "model_final.pth"))


@pytest.mark.parametrize("make", [_create_model, lambda: nn.DataParallel(_create_model())])
def test_periodic_checkpointer_max_to_keep(tmp_path, make):
    f = str(tmp_path)
    checkpointer = Checkpointer(make(), save_dir=f, save_to_disk=True)
    periodic_checkpointer = PeriodicCheckpointer(checkpointer, 10, 99, max_to_keep=3)
    for _ in range(2):
        checkpoint_paths = []
        for iteration in range(100):
            periodic_checkpointer.step(iteration)
            if (iteration + 1) % 10 == 0:
                checkpoint_paths.append(os.path.join(f, "model_{:07d}.pth".format(iteration)))
        for path in checkpoint_paths[:-3]:
            assert not os.path.exists(path)
        for path in checkpoint_paths[-3:]:
            assert os.path.exists(path)


# ---- same files, interop with the real fvcore -------------------------------------------------

def test_the_file_holds_exactly_what_fvcore_writes(tmp_path):
    model, optimizer_model = _create_model(), _create_model()
    optimizer = torch.optim.SGD(optimizer_model.parameters(), lr=0.1, momentum=0.9)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()  # fvcore does not make it
    Checkpointer(model, str(ours), optimizer=optimizer).save("model_0000009", iteration=9, note="x")
    fvcore_checkpoint.Checkpointer(model, str(theirs), optimizer=optimizer).save("model_0000009", iteration=9, note="x")
    a, b = (torch.load(d / "model_0000009.pth", weights_only=True) for d in (ours, theirs))
    assert list(a) == list(b) == ["model", "optimizer", "iteration", "note"]
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert (ours / "last_checkpoint").read_text() == (theirs / "last_checkpoint").read_text() == "model_0000009.pth"
    # What fvcore's users see in the directory: the same .pth files (ours adds hidden ones only).
    assert fvcore_checkpoint.Checkpointer(model, str(ours)).get_all_checkpoint_files() == [str(ours / "model_0000009.pth")]
    assert sorted(p for p in os.listdir(ours) if not p.startswith(".")) == sorted(os.listdir(theirs))


def test_fvcore_resumes_from_our_directory_and_ours_from_fvcores(tmp_path):
    trained = _create_model()
    ours = tmp_path / "ours"
    periodic = PeriodicCheckpointer(Checkpointer(trained, str(ours)), 5)
    for it in range(10):
        periodic.step(it)
    fresh = _create_model()
    extra = fvcore_checkpoint.Checkpointer(fresh, str(ours)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    _same_parameters(trained, fresh)

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    periodic = fvcore_checkpoint.PeriodicCheckpointer(fvcore_checkpoint.Checkpointer(trained, str(theirs)), 5)
    for it in range(10):
        periodic.step(it)
    fresh = _create_model()
    assert Checkpointer(fresh, str(theirs)).resume_or_load("", resume=True)["iteration"] == 9
    _same_parameters(trained, fresh)


# ---- beyond fvcore -----------------------------------------------------------------------------

def _saved_run(directory, iterations=20, period=5):
    model = _create_model()
    periodic = PeriodicCheckpointer(Checkpointer(model, str(directory)), period)
    for it in range(iterations):
        with torch.no_grad():
            model[0].weight.fill_(float(it))
        periodic.step(it)
    return model


def test_truncated_newest_falls_back_with_a_warning(tmp_path, caplog):
    _saved_run(tmp_path)
    newest = tmp_path / "model_0000019.pth"
    newest.write_bytes(newest.read_bytes()[:-100])
    fresh = _create_model()
    with caplog.at_level(logging.WARNING):
        extra = Checkpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 14
    assert torch.equal(fresh[0].weight, torch.full_like(fresh[0].weight, 14.0))
    assert "Checkpoint model_0000019 in" in caplog.text and "truncated or overwritten" in caplog.text
    assert "last_checkpoint names model_0000019.pth, which is missing or not usable: resuming from model_0000014.pth" in caplog.text
    assert sorted(os.listdir(tmp_path / "corrupt")) == [".model_0000019.pth.json", ".model_0000019.pth.rng", "model_0000019.pth"]
    # fvcore's own resume_or_load crashes on that same truncated file.
    _saved_run(tmp_path / "again")
    newest = tmp_path / "again" / "model_0000019.pth"
    newest.write_bytes(newest.read_bytes()[:-100])
    with pytest.raises(Exception):
        fvcore_checkpoint.Checkpointer(_create_model(), str(tmp_path / "again")).resume_or_load("", resume=True)


def test_pointer_to_a_missing_file_falls_back(tmp_path, caplog):
    _saved_run(tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with caplog.at_level(logging.WARNING):
        extra = Checkpointer(_create_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 19
    assert "last_checkpoint names model_0000099.pth, which is missing or not usable: resuming from model_0000019.pth" in caplog.text


def test_altered_bytes_are_caught_by_the_checksum(tmp_path):
    _saved_run(tmp_path)
    newest = tmp_path / "model_0000019.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert Checkpointer(_create_model(), str(tmp_path)).resume_or_load("", resume=True)["iteration"] == 14


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_pickles_are_refused(tmp_path):
    torch.save({"model": _create_model().state_dict(), "evil": Evil()}, tmp_path / "model_final.pth")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(RuntimeError, match=r"holds types that are not allowed to load, got: .*Nothing in it was run"):
        Checkpointer(_create_model(), str(tmp_path)).resume_or_load("", resume=True)


def test_max_to_keep_counts_checkpoints_from_before_a_restart(tmp_path):
    model = _create_model()
    periodic = PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 10, max_to_keep=2)
    for it in range(50):
        periodic.step(it)
    # A restart: a new process' checkpointer resumes and goes on.
    periodic = PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 10, max_to_keep=2)
    start = periodic.checkpointer.resume_or_load("")["iteration"] + 1
    for it in range(start, 70):
        periodic.step(it)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth")) == ["model_0000059.pth", "model_0000069.pth"]


def test_policies_instead_of_period_and_max_to_keep(tmp_path):
    periodic = PeriodicCheckpointer(
        Checkpointer(_create_model(), str(tmp_path)),
        save_policy=SaveEveryNumBatches(4, restart_each_epoch=False),
        retention_policy=KeepAny([KeepMostRecentByCount(2), KeepEveryNumBatches(12)]),
        max_iter=20,
    )
    for it in range(20):
        periodic.step(it)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth")) == [
        "model_0000011.pth", "model_0000015.pth", "model_0000019.pth", "model_final.pth"
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"period": 0}, r"`period` must be an integer >= 1, got 0\."),
        ({}, r"give exactly one of `period` and `save_policy`, got period=None"),
        ({"period": 5, "max_to_keep": 0}, r"`max_to_keep` must be an integer >= 1, got 0\. Use None to keep all\."),
        ({"period": 5, "max_to_keep": 2, "retention_policy": KeepMostRecentByCount(2)}, r"give at most one of `max_to_keep` and `retention_policy`"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=r"^trainer_ckpt\.fvcore\.PeriodicCheckpointer: " + message):
        PeriodicCheckpointer(Checkpointer(_create_model(), str(tmp_path)), **kwargs)


def test_background_saves_snapshot_at_call_time(tmp_path):
    model = _create_model()
    checkpointer = Checkpointer(model, str(tmp_path), background=True)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    checkpointer.save("model_a")
    with torch.no_grad():
        model[0].weight.fill_(2.0)  # right after save() returned: must not reach the file
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_a.pth")  # waits for the save
    fresh = _create_model()
    Checkpointer(fresh, str(tmp_path)).resume_or_load("")
    assert torch.equal(fresh[0].weight, torch.ones_like(fresh[0].weight))


def test_resume_restores_the_random_state(tmp_path):
    model = _create_model()
    checkpointer = Checkpointer(model, str(tmp_path))
    torch.manual_seed(3)
    random.seed(3)
    checkpointer.save("model_0000000", iteration=0)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    Checkpointer(_create_model(), str(tmp_path)).resume_or_load("")
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    Checkpointer(_create_model(), str(tmp_path), restore_rng=False).resume_or_load("")
    assert not torch.equal(torch.rand(3), expected[0])


def test_importing_trainer_ckpt_imports_no_peer():
    code = "import sys, trainer_ckpt; print(sorted(m for m in ('fvcore', 'ignite', 'mmengine') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.stdout.strip() == "[]", run.stderr


def test_fvcores_messages_for_missing_and_unexpected_keys(tmp_path, caplog):
    saved = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    Checkpointer(saved, str(tmp_path)).save("model_final")
    other = nn.Sequential(nn.Linear(2, 3))
    other.extra = nn.Linear(1, 1)
    with caplog.at_level(logging.WARNING):
        Checkpointer(other, str(tmp_path)).resume_or_load("")
    assert "Some model parameters or buffers are not found in the checkpoint:" in caplog.text
    assert "extra.{bias, weight}" in caplog.text
    assert "The checkpoint state_dict contains keys that are not used by the model:" in caplog.text
    assert "1.{bias, weight}" in caplog.text


def test_background_first_step_that_does_not_save_allocates_the_first_saves_buffers(tmp_path):
    """Off the training thread: the first periodic save then only copies into buffers that exist."""
    model = nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()
    checkpointer = Checkpointer(model, str(tmp_path), background=True, optimizer=optimizer)
    periodic = PeriodicCheckpointer(checkpointer, period=3)
    periodic.step(0)  # does not save: allocates
    checkpointer.wait()
    buffers = checkpointer.engine._snapshot._buffers
    ahead = {path: buffer.data_ptr() for path, buffer in buffers.items()}
    assert ("checkpoint", "model", "weight") in ahead and ("checkpoint", "optimizer", "state", 0, "exp_avg") in ahead
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == [".trainer_ckpt.core.lock"]
    periodic.step(1)
    with torch.no_grad():
        model.weight.fill_(3.0)
    periodic.step(2)  # saves model_0000002 from those buffers
    checkpointer.wait()
    assert {path: buffers[path].data_ptr() for path in ahead} == ahead
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert torch.equal(saved["model"]["weight"], torch.full((256, 256), 3.0))
