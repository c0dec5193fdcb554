"""
Gaps in the faces (issue 23, points 4-6 and the CLI's storage options), each with the real peer:
ignite's exception types for files it cannot load, ignite's handler state after a save that
failed, a URL where a local directory is expected, a `last_checkpoint` that lags a committed
checkpoint (a real process SIGKILLed between the commit and the pointer's update), and
`--storage-options` that belong to one call of the CLI.
"""
import errno
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import ignite.handlers as peer
import pytest
import torch
from ignite.engine import Events

from tests.conftest import ROOT
from tests.test_ignite_face import make_run
from trainer_ckpt.io import loading

PY = sys.executable
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


# ---- ignite: the exception types of ignite's `load_objects` -----------------------------------

def ignite_run(seed=0):
    model, _, trainer, to_save = make_run(seed)
    return model, trainer, to_save


DATA = [torch.full((2, 3), float(i)) / 10 for i in range(4)]


class Unsafe:
    """Not a type `weights_only` loading allows."""


def _bad_file(directory, kind):
    path = os.path.join(directory, f"{kind}.pt")
    good = {"model": torch.nn.Linear(3, 2).state_dict()}
    if kind == "torn":
        torch.save(good, path)
        with open(path, "r+b") as f:
            f.truncate(100)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "a_directory":
        os.makedirs(path)
    elif kind == "unsafe":
        torch.save({**good, "extra": Unsafe()}, path)
    return path  # "missing": nothing there


@pytest.mark.parametrize("kind", ["missing", "torn", "empty", "a_directory", "unsafe"])
def test_load_objects_raises_what_ignite_raises_for_the_same_file(tmp_path, kind):
    """A drop-in keeps ignite's exception types (FileNotFoundError for a missing file...); ours
    are subclasses of those and of trainer_ckpt's own."""
    from trainer_ckpt.ignite import Checkpoint

    path = _bad_file(str(tmp_path), kind)
    with pytest.raises(Exception) as theirs:
        peer.Checkpoint.load_objects({"model": torch.nn.Linear(3, 2)}, path)
    with pytest.raises(type(theirs.value)) as ours:
        Checkpoint.load_objects({"model": torch.nn.Linear(3, 2)}, path)
    assert "trainer_ckpt.ignite.Checkpoint.load_objects: " in str(ours.value)
    if kind == "unsafe":
        assert isinstance(ours.value, (loading.UnsafeCheckpoint, pickle.UnpicklingError))
        assert "holds types that are not allowed to load" in str(ours.value)
    else:
        assert isinstance(ours.value, loading.BadCheckpoint)
        assert "is not usable" in str(ours.value) and "latest_checkpoint(" in str(ours.value)
    if kind == "missing":
        assert isinstance(ours.value, FileNotFoundError)
        assert ours.value.errno == errno.ENOENT and ours.value.filename == path


def test_a_checkpoint_of_ours_missing_or_altered(tmp_path):
    from trainer_ckpt.ignite import Checkpoint, DiskSaver

    model, trainer, to_save = ignite_run()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(to_save, DiskSaver(tmp_path), n_saved=2))
    trainer.run(DATA, max_epochs=2)
    newest, older = tmp_path / "checkpoint_8.pt", tmp_path / "checkpoint_4.pt"
    data = bytearray(newest.read_bytes())
    data[-30] ^= 0xFF  # the same size, other bytes: ignite would load it; the record's CRC32 says no
    newest.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="its record says") as altered:
        Checkpoint.load_objects(ignite_run()[2], str(newest))
    assert isinstance(altered.value, loading.BadCheckpoint)
    os.remove(older)  # its record stays
    with pytest.raises(FileNotFoundError, match="checkpoint_4.pt is missing"):
        Checkpoint.load_objects(ignite_run()[2], str(older))
    with pytest.raises(TypeError, match="should have `load_state_dict` method"):  # ignite's check comes first, as in ignite
        Checkpoint.load_objects({"model": object()}, str(tmp_path / "nothing.pt"))


# ---- ignite: the handler's state after a save that failed --------------------------------------

class _Switch:
    """A checkpointed object whose state cannot be pickled once `broken` is set."""

    def __init__(self):
        self.broken = False

    def state_dict(self):
        return {"f": lambda: None} if self.broken else {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("n_saved", [1, 2])
def test_a_failed_save_leaves_the_handler_on_the_last_committed_checkpoint(tmp_path, n_saved, background):
    """ignite lists the new file (and drops the one it replaces) before it saves: after a save
    that failed, `last_checkpoint` named a file that was never written."""
    from trainer_ckpt.ignite import Checkpoint, DiskSaver

    model, trainer, to_save = ignite_run()
    switch = _Switch()
    handler = Checkpoint({**to_save, "switch": switch}, DiskSaver(tmp_path, background=background), n_saved=n_saved)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda _: setattr(switch, "broken", True))
    expected = ["checkpoint_8.pt"] if n_saved == 1 else ["checkpoint_4.pt", "checkpoint_8.pt"]
    if background:  # the failed save is the run's last: its error comes where the handler is asked
        trainer.run(DATA, max_epochs=3)
        with pytest.raises(Exception, match="pickle"):
            handler.last_checkpoint
    else:
        with pytest.raises(Exception, match="pickle"):
            trainer.run(DATA, max_epochs=3)
    assert visible(tmp_path) == expected  # checkpoint_12.pt was never written, and nothing was deleted
    assert handler.last_checkpoint == tmp_path / "checkpoint_8.pt"
    assert [item.filename for item in handler._saved] == expected
    assert [f for _, f in handler.state_dict()["_saved"]] == expected
    model2, trainer2, to_load = ignite_run(seed=1)
    Checkpoint.load_objects({**to_load, "switch": _Switch()}, str(handler.last_checkpoint))
    assert trainer2.state.iteration == 8
    for key, value in model.state_dict().items():
        assert not torch.equal(model2.state_dict()[key], value)  # the run trained on past the checkpoint


def test_a_background_save_that_failed_is_raised_at_the_next_call_with_the_list_put_back(tmp_path):
    from trainer_ckpt.ignite import Checkpoint, DiskSaver

    model, trainer, to_save = ignite_run()
    switch = _Switch()
    handler = Checkpoint({**to_save, "switch": switch}, DiskSaver(tmp_path, background=True), n_saved=1,
                         score_function=lambda engine: float(engine.state.epoch), score_name="epoch")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda _: setattr(switch, "broken", True))
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=3), lambda _: setattr(switch, "broken", False))
    with pytest.raises(Exception, match="pickle"):  # epoch 3's save failed on the worker thread: raised at epoch 4's
        trainer.run(DATA, max_epochs=4)
    assert handler.last_checkpoint == tmp_path / "checkpoint_epoch=2.0000.pt"
    assert visible(tmp_path) == ["checkpoint_epoch=2.0000.pt"]
    trainer.state.epoch, trainer.state.iteration = 3, 12  # the next save is judged against epoch 2's, not 3's
    handler(trainer)
    handler.save_handler.wait()
    assert handler.last_checkpoint == tmp_path / "checkpoint_epoch=3.0000.pt"
    assert visible(tmp_path) == ["checkpoint_epoch=3.0000.pt"]


# ---- a URL where a local directory is expected -------------------------------------------------

def test_allennlp_checkpointer_refuses_a_url_as_its_directory(tmp_path, monkeypatch):
    from allennlp.common.checks import ConfigurationError

    from trainer_ckpt import CheckpointerGroup, DefaultCheckpointer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    message = (r"^trainer_ckpt checkpointer: `serialization_dir` must be a local directory, got 's3://ckpts/run2'\. "
               r"Train into a local directory .* upload_to: \"s3://ckpts/run2\" .*\.$")
    with pytest.raises(ConfigurationError, match=message):
        DefaultCheckpointer("s3://ckpts/run2")
    with pytest.raises(ConfigurationError, match=message):
        CheckpointerGroup("s3://ckpts/run2", checkpointers=[])
    with pytest.raises(ConfigurationError, match=r"got 'file:///data/run'\. Give the path itself, '/data/run'\.$"):
        DefaultCheckpointer("file:///data/run")
    assert os.listdir(tmp_path) == []  # no local folder named "s3:"


def test_mmengine_runner_with_a_url_work_dir_is_refused_before_anything_is_saved(tmp_path, monkeypatch):
    from scripts.mmengine_run import build_runner
    from trainer_ckpt.mmengine import CheckpointHook

    monkeypatch.chdir(tmp_path)
    runner = build_runner("s3://ckpts/run2", dict(type=CheckpointHook, interval=1), max_epochs=1, val=False)
    assert runner.work_dir == str(tmp_path / "s3:" / "ckpts" / "run2")  # what mmengine made of it
    with pytest.raises(ValueError, match=(
            r"^trainer_ckpt.mmengine.CheckpointHook: the runner's `work_dir` must be a local directory when `out_dir` "
            r"is not given, got 's3://ckpts/run2' .* out_dir='s3://ckpts' \(the checkpoints then go to s3://ckpts/run2\)")):
        runner.train()
    assert not [n for _, _, files in os.walk(tmp_path) for n in files if n.endswith(".pth") or n == "last_checkpoint"]
    build_runner("work:1", dict(type=CheckpointHook, interval=1), max_epochs=1, val=False).train()  # a local one
    assert {"epoch_1.pth", "last_checkpoint"} <= set(os.listdir(tmp_path / "work:1"))


def test_cli_export_refuses_a_url_as_its_target(tmp_path, monkeypatch, capsys):
    from trainer_ckpt.cli.commands import main
    from trainer_ckpt.fvcore import Checkpointer

    Checkpointer(torch.nn.Linear(2, 2), str(tmp_path / "run")).save("model_0000004", iteration=4)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(tmp_path / "run"), "--to", "s3://bucket/w.pt"]) == 2
    assert "trainer_ckpt: --to must be a local file, got 's3://bucket/w.pt'. Export to a local file" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["run"]


# ---- a last_checkpoint that lags a committed checkpoint ----------------------------------------

KILL_AT_POINTER = """
import os, signal, sys
from trainer_ckpt.io import durable
real, target = durable.atomic_write, sys.argv[2]

def atomic_write(path, write, *args, **kwargs):
    if os.path.basename(path) == "last_checkpoint":
        import io
        payload = io.BytesIO()
        write(payload)
        if payload.getvalue().decode().endswith(target):  # committed, the pointer not updated yet
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, write, *args, **kwargs)

durable.atomic_write = atomic_write
"""


def _killed(script, *args):
    code = textwrap.dedent(KILL_AT_POINTER) + textwrap.dedent(script)
    done = subprocess.run([PY, "-c", code, *map(str, args)], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


MMENGINE = """
from scripts.mmengine_run import build_runner
from trainer_ckpt.mmengine import CheckpointHook
build_runner(sys.argv[1], dict(type=CheckpointHook, interval=1), max_epochs=4, val=False).train()
"""


def _resume_mmengine(work_dir):
    from mmengine.hooks import Hook

    from scripts.mmengine_run import build_runner
    from trainer_ckpt.mmengine import CheckpointHook

    seen = {}

    class Where(Hook):
        def before_train(self, runner):
            seen.update(epoch=runner.epoch, iter=runner.iter)

    runner = build_runner(str(work_dir), dict(type=CheckpointHook, interval=1), max_epochs=4, val=False, resume=True,
                          custom_hooks=[dict(type=Where, priority="LOWEST")])
    runner.train()
    return seen, runner


def test_mmengine_resumes_from_a_checkpoint_committed_after_last_checkpoint(tmp_path, caplog):
    """SIGKILLed between the commit of epoch_3.pth and the update of last_checkpoint: the resume
    starts at epoch 3, not at epoch 2 (the pointer's), and says why at INFO."""
    _killed(MMENGINE, tmp_path, "epoch_3.pth")
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "epoch_2.pth")
    assert {"epoch_3.pth", ".epoch_3.pth.json"} <= set(os.listdir(tmp_path))  # committed: its record is there
    with caplog.at_level(logging.INFO, logger="trainer_ckpt"):
        seen, runner = _resume_mmengine(tmp_path)
    assert seen == {"epoch": 3, "iter": 24}
    assert (f"last_checkpoint names {tmp_path / 'epoch_2.pth'}, but {tmp_path / 'epoch_3.pth'} is newer and committed"
            in caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trainer_ckpt")]
    assert runner.iter == 32 and (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "epoch_4.pth")


def test_mmengine_follows_a_last_checkpoint_written_after_the_newest(tmp_path):
    """Someone pointed last_checkpoint at an older checkpoint after the run: that is followed."""
    from scripts.mmengine_run import train as run_in_process

    run_in_process(str(tmp_path), val=False, max_epochs=3)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "epoch_2.pth"))
    seen, _ = _resume_mmengine(tmp_path)
    assert seen == {"epoch": 2, "iter": 16}


FVCORE = """
import torch
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
checkpointer = Checkpointer(model, sys.argv[1], optimizer=optimizer)
periodic = PeriodicCheckpointer(checkpointer, period=5, max_iter=20)
for iteration in range(20):
    optimizer.zero_grad()
    model(torch.full((3, 4), float(iteration))).pow(2).mean().backward()
    optimizer.step()
    periodic.step(iteration)
"""


def _resume_fvcore(save_dir):
    from trainer_ckpt.fvcore import Checkpointer

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = Checkpointer(model, str(save_dir), optimizer=optimizer)
    return checkpointer, checkpointer.resume_or_load("", resume=True), model


@pytest.mark.parametrize("killed_at, pointer", [("model_0000014.pth", "model_0000009.pth"), ("model_0000004.pth", None)])
def test_fvcore_resumes_from_a_checkpoint_committed_after_last_checkpoint(tmp_path, caplog, killed_at, pointer):
    """SIGKILLed between a commit and `last_checkpoint`'s update (or its first write): the resume
    starts at the newest committed checkpoint."""
    _killed(FVCORE, tmp_path, killed_at)
    if pointer is None:
        assert not (tmp_path / "last_checkpoint").exists()
    else:
        assert (tmp_path / "last_checkpoint").read_text() == pointer
    with caplog.at_level(logging.INFO, logger="trainer_ckpt"):
        checkpointer, extra, model = _resume_fvcore(tmp_path)
    assert checkpointer.has_checkpoint()  # detectron2 starts at iteration + 1 only when this holds
    assert extra["iteration"] == int(killed_at[6:13])
    saved = torch.load(tmp_path / killed_at, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key])
    text = (f"last_checkpoint is missing in {tmp_path}" if pointer is None
            else f"last_checkpoint names {pointer}, but {killed_at} is newer and committed")
    assert text in caplog.text and f"resuming from {killed_at}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trainer_ckpt")]


def test_fvcore_follows_a_last_checkpoint_written_after_the_newest(tmp_path):
    from trainer_ckpt.fvcore import Checkpointer

    checkpointer = Checkpointer(torch.nn.Linear(4, 2), str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    checkpointer.save("model_0000009", iteration=9)
    checkpointer.tag_last_checkpoint("model_0000004.pth")  # chosen after the newest was saved
    assert _resume_fvcore(tmp_path)[1]["iteration"] == 4


# ---- the CLI's --storage-options: one call's own ------------------------------------------------

def test_storage_options_of_one_cli_call_do_not_carry_over_to_the_next(tmp_path, capsys):
    """fsspec's `dir://` file system reads under its `path` option: a call without it cannot
    find the run, however the call before it was made."""
    from trainer_ckpt.cli.commands import main
    from trainer_ckpt.fvcore import Checkpointer

    Checkpointer(torch.nn.Linear(2, 2), str(tmp_path / "bucket" / "run")).save("model_0000004", iteration=4)
    options = '{"path": "%s", "target_protocol": "file"}' % (tmp_path / "bucket")
    assert main(["ls", "dir://run", "--storage-options", options, "--json"]) == 0
    assert '"name": "model_0000004.pth"' in capsys.readouterr().out
    assert main(["ls", "dir://run", "--storage-options", '{"target_protocol": "file"}', "--json"]) == 2
    assert "trainer_ckpt: cannot read dir://run" in capsys.readouterr().err
    assert main(["verify", "dir://run", "--storage-options", "[1]"]) == 2
    assert "--storage-options must be a JSON object, got '[1]'" in capsys.readouterr().err
