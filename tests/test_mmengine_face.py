"""
trainer_ckpt.mmengine beyond mmengine's own tests (tests/test_mmengine_peer.py), in a real Runner:
the same files as mmengine 0.10.7, work dirs interchangeable both ways, resume that verifies and
falls back, safe loading of exactly what mmengine checkpoints hold, deletions only after the
replacing checkpoint is committed, and an exact resume after SIGKILL.
"""
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from scripts.mmengine_run import build_runner, hook_type
from scripts.plain_loop import max_difference
from tests._resume import assert_starts, resumed
from trainer_ckpt.mmengine import CheckpointHook, mmengine_safe_globals
from trainer_ckpt.retention_policies import KeepMostRecentByCount

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith(".") and n.endswith(".pth") or n == "last_checkpoint")


def train(work_dir, peer=False, max_epochs=2, resume=False, **hook):
    runner = build_runner(str(work_dir), dict(type=hook_type(peer), interval=1, **hook), max_epochs=max_epochs, resume=resume)
    runner.train()
    return runner


def load(path):
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        return torch.load(path, weights_only=True)


def test_same_files_and_contents_as_mmengine(tmp_path):
    hook = dict(save_best="acc", max_keep_ckpts=2, published_keys=["meta", "state_dict"])
    with torch.serialization.safe_globals(mmengine_safe_globals()):  # mmengine's publishing loads with weights_only
        train(tmp_path / "theirs", peer=True, max_epochs=3, **hook)
    train(tmp_path / "ours", max_epochs=3, restore_rng=False, **hook)  # mmengine's random stream, validation's draws included
    ours, theirs = visible(tmp_path / "ours"), visible(tmp_path / "theirs")
    assert [n.split("-")[0] for n in ours] == [n.split("-")[0] for n in theirs]  # published names end in a hash
    assert "epoch_3.pth" in ours and "epoch_1.pth" not in ours and any(n.startswith("best_acc_epoch_") for n in ours)
    a, b = load(tmp_path / "ours" / "epoch_3.pth"), load(tmp_path / "theirs" / "epoch_3.pth")
    assert a.keys() == b.keys() == {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 3
    assert (tmp_path / "ours" / "last_checkpoint").read_text() == str(tmp_path / "ours" / "epoch_3.pth")


def test_mmengine_cannot_resume_its_own_work_dir_on_this_torch_and_ours_can(tmp_path):
    train(tmp_path, peer=True, max_epochs=2)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(tmp_path, peer=True, max_epochs=3, resume=True)
    with resumed(tmp_path, at=16):  # ours resumes mmengine's work dir: after epoch 2 (8 iterations an epoch)
        runner = train(tmp_path, max_epochs=3, resume=True)
    assert runner.epoch == 3 and runner.iter == 24
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "epoch_3.pth")
    assert_starts(tmp_path, 0, 16)  # mmengine's failed resume trained nothing


def test_mmengine_resumes_our_work_dir(tmp_path):
    train(tmp_path, max_epochs=2)
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "epoch_2.pth")  # what mmengine resumes from
    with torch.serialization.safe_globals(mmengine_safe_globals()), resumed(tmp_path, at=16):  # mmengine's needs on torch >= 2.6
        runner = train(tmp_path, peer=True, max_epochs=3, resume=True)
    assert runner.epoch == 3 and runner.iter == 24


def test_resume_falls_back_from_a_truncated_newest_with_a_warning(tmp_path, caplog):
    train(tmp_path, max_epochs=3)
    newest = tmp_path / "epoch_3.pth"
    newest.write_bytes(newest.read_bytes()[:200])
    with caplog.at_level("WARNING", logger="trainer_ckpt"), resumed(tmp_path, at=16):
        runner = build_runner(str(tmp_path), dict(type=CheckpointHook, interval=1), max_epochs=3, resume=True)
        runner.train()
    assert "Checkpoint epoch_3.pth" in caplog.text and "Falling back to an older checkpoint" in caplog.text
    assert f"last_checkpoint names {newest}, which is missing or not usable: resuming from {tmp_path / 'epoch_2.pth'}" in caplog.text
    assert (tmp_path / "corrupt" / "epoch_3.pth").exists()
    assert runner.iter == 24  # resumed at epoch 2 and trained epoch 3 again


def test_a_failed_save_keeps_the_checkpoint_it_would_replace(tmp_path):
    """mmengine deletes the oldest kept checkpoint before it saves the new one: with
    max_keep_ckpts=1, a save that fails leaves none. Ours deletes it after the commit."""
    from mmengine.hooks import Hook

    class Break(Hook):
        def after_train_epoch(self, runner):
            if runner.epoch == 1:  # epoch 2 ends: its save must fail
                runner.message_hub.update_info("unpicklable", lambda: None)

    for peer, directory in ((False, tmp_path / "ours"), (True, tmp_path / "theirs")):
        runner = build_runner(str(directory), dict(type=hook_type(peer), interval=1, max_keep_ckpts=1), max_epochs=2,
                              custom_hooks=[dict(type=Break, priority="VERY_HIGH")])
        with pytest.raises(Exception):
            runner.train()
    assert [n for n in os.listdir(tmp_path / "ours") if n.endswith(".pth")] == ["epoch_1.pth"]
    assert [n for n in os.listdir(tmp_path / "theirs") if n.endswith(".pth")] == []  # mmengine lost its only one


def test_retention_policy_and_registry_name(tmp_path):
    import trainer_ckpt.mmengine  # noqa: F401  (registers TrainerCkptCheckpointHook)

    runner = build_runner(str(tmp_path), dict(type="TrainerCkptCheckpointHook", interval=1,
                                              retention_policy=KeepMostRecentByCount(2)), max_epochs=4)
    runner.train()
    assert isinstance(runner._hooks[[type(h).__name__ for h in runner._hooks].index("CheckpointHook")], CheckpointHook)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth")) == ["epoch_3.pth", "epoch_4.pth"]


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"^trainer_ckpt.mmengine.CheckpointHook: `backend_args` must name the local disk, got \{'backend': 'petrel'\}"):
        CheckpointHook(interval=1, backend_args={"backend": "petrel"})
    with pytest.raises(ValueError, match=r"'nosuchprotocol://bucket/run' cannot be opened with fsspec, got ValueError: "):
        CheckpointHook(interval=1, out_dir="nosuchprotocol://bucket/run")
    with pytest.raises(ValueError, match=r"give at most one of `max_keep_ckpts` and `retention_policy`"):
        CheckpointHook(interval=1, max_keep_ckpts=2, retention_policy=KeepMostRecentByCount(2))
    with pytest.raises(ValueError, match=r"`background` must be True or False, got 1"):
        CheckpointHook(interval=1, background=1)


def test_unsafe_types_are_refused_on_resume(tmp_path):
    train(tmp_path, max_epochs=1)
    checkpoint = load(tmp_path / "epoch_1.pth")
    checkpoint["meta"]["extra"] = KeepMostRecentByCount(1)  # not a type mmengine's checkpoints hold
    torch.save(checkpoint, tmp_path / "epoch_1.pth")
    os.remove(tmp_path / ".epoch_1.pth.json")  # as if another tool wrote it
    with pytest.raises(Exception, match=r"holds types that are not allowed to load, got: .*KeepMostRecentByCount.*safe_globals"):
        train(tmp_path, max_epochs=2, resume=True)


def _run(work_dir, *args):
    command = [sys.executable, os.path.join(ROOT, "scripts", "mmengine_run.py"), str(work_dir), "--no-val", *args]
    return subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True).returncode


def test_sigkill_and_resume_is_bit_exact(tmp_path):
    """Only the killed run needs a process of its own; the others go on in this one."""
    from scripts.mmengine_run import train as run_in_process

    run_in_process(str(tmp_path / "full"), val=False)
    assert _run(tmp_path / "cut", "--kill-at", "20") == -signal.SIGKILL  # mid-epoch 3; epoch 2's checkpoint
    assert visible(tmp_path / "cut") == ["epoch_1.pth", "epoch_2.pth", "last_checkpoint"]
    with resumed(tmp_path / "cut", at=16):  # epoch 2's end: 8 iterations an epoch
        run_in_process(str(tmp_path / "cut"), val=False, resume=True)
    full = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "final.pt", weights_only=True)
    assert full["iter"] == cut["iter"] == 32
    assert max_difference(full, cut) == 0.0


def test_background_saves_buffers_are_allocated_at_the_first_iteration(tmp_path):
    """A real Runner saving each epoch in the background: the buffers of the first save exist
    after the first iteration (allocated on the worker thread), and the saves fill those."""
    from mmengine.hooks import Hook

    seen = {}

    class Peek(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter == 1:  # after the first iteration's hooks (this one runs last)
                hook = next(h for h in runner.hooks if isinstance(h, CheckpointHook))
                hook.wait()
                seen.update({path: b.data_ptr() for path, b in hook.engine._snapshot._buffers.items()})

    runner = build_runner(str(tmp_path), dict(type=CheckpointHook, interval=1, background=True), max_epochs=2,
                          custom_hooks=[dict(type=Peek, priority="LOWEST")])
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, CheckpointHook))
    hook.wait()
    assert ("checkpoint", "state_dict", "net.0.weight") in seen
    assert ("checkpoint", "optimizer", "state", 0, "momentum_buffer") in seen
    assert {path: hook.engine._snapshot._buffers[path].data_ptr() for path in seen} == seen
    saved = load(tmp_path / "epoch_2.pth")
    assert torch.equal(saved["state_dict"]["net.0.weight"], runner.model.state_dict()["net.0.weight"])
