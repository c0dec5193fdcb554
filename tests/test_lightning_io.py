"""
The Lightning face's `CheckpointIO` in a real `lightning.pytorch.Trainer` (Lightning 2.6.6,
BoringModel on the CPU): Lightning's own tests of the plugin API (test_checkpoint_io_plugin.py,
test_async_checkpoint.py) adapted to ours; a record for every save; a torn or altered file of ours
refused with an error naming it, where Lightning's own IO fails obscurely or loads garbage; a
background save's failure raised at the next save or at teardown; removals and loads waiting for the
save in flight; interop both ways; a resume through ours that starts at the checkpoint's step.
"""
import argparse
import logging
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path
from unittest.mock import MagicMock, Mock

import pytest
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import SingleDeviceStrategy

from trainer_ckpt.core.engine import CheckpointSaveError
from trainer_ckpt.io import durable, fastio, loading
from trainer_ckpt.lightning import CheckpointIO

TINY = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0)


def record_of(path):
    path = Path(path)
    return durable.read_json(str(path.parent / f".{path.name}.json"))


def assert_recorded(path):
    """`path` has a record whose size and CRC32 are the file's."""
    expected = record_of(path)["files"]["checkpoint"]
    assert expected["name"] == Path(path).name
    assert expected["size"] == os.path.getsize(path)
    assert expected["crc32"] == fastio.file_crc(str(path))[1]


def same_tensors(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def slow_writes(monkeypatch, seconds):
    """Every state file the engine writes takes `seconds` longer (a slow disk): a window for races."""
    save_temp = durable.save_temp

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return save_temp(*args, **kwargs)

    monkeypatch.setattr(durable, "save_temp", slow)


# ---- Lightning's own tests of the plugin API, adapted -----------------------------------------


def test_checkpoint_plugin_called(tmp_path):
    """Upstream test_checkpoint_plugin_called: our IO, wrapped in a MagicMock, is what Lightning
    calls for every save, removal and load, through the strategy and through `plugins=[...]`."""
    checkpoint_plugin = MagicMock(wraps=CheckpointIO(), spec=CheckpointIO)
    ck = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, strategy=SingleDeviceStrategy("cpu", checkpoint_io=checkpoint_plugin),
                      callbacks=ck, max_epochs=2, limit_train_batches=1, limit_val_batches=0, limit_test_batches=1, **TINY)
    trainer.fit(BoringModel())

    ckpt_files = {fn.name for fn in Path(tmp_path).glob("*.ckpt")}
    assert ckpt_files == {"epoch=1-step=2.ckpt", "last.ckpt"}
    assert trainer.checkpoint_callback.best_model_path == str(tmp_path / "epoch=1-step=2.ckpt")
    assert trainer.checkpoint_callback.last_model_path == str(tmp_path / "last.ckpt")
    assert checkpoint_plugin.save_checkpoint.call_count == 4
    assert checkpoint_plugin.remove_checkpoint.call_count == 1
    for name in ckpt_files:  # ours wrote them: each with its record; the removed one's record went too
        assert_recorded(tmp_path / name)
    assert not (tmp_path / ".epoch=0-step=1.ckpt.json").exists()

    trainer.test(BoringModel(), ckpt_path=ck.last_model_path)
    checkpoint_plugin.load_checkpoint.assert_called_with(str(tmp_path / "last.ckpt"), weights_only=None)

    checkpoint_plugin.reset_mock()
    ck = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, strategy=SingleDeviceStrategy("cpu"), plugins=[checkpoint_plugin],
                      callbacks=ck, max_epochs=2, limit_train_batches=1, limit_val_batches=0, limit_test_batches=1,
                      **{k: v for k, v in TINY.items() if k != "accelerator"})
    trainer.fit(BoringModel())

    ckpt_files = {fn.name for fn in Path(tmp_path).glob("*.ckpt")}
    assert ckpt_files == {"epoch=1-step=2.ckpt", "last.ckpt", "epoch=1-step=2-v1.ckpt", "last-v1.ckpt"}
    assert trainer.checkpoint_callback.best_model_path == str(tmp_path / "epoch=1-step=2-v1.ckpt")
    assert trainer.checkpoint_callback.last_model_path == str(tmp_path / "last-v1.ckpt")
    assert checkpoint_plugin.save_checkpoint.call_count == 4
    assert checkpoint_plugin.remove_checkpoint.call_count == 1
    for name in ckpt_files:
        assert_recorded(tmp_path / name)

    trainer.test(BoringModel(), ckpt_path=ck.last_model_path)
    checkpoint_plugin.load_checkpoint.assert_called_once()
    checkpoint_plugin.load_checkpoint.assert_called_with(str(tmp_path / "last-v1.ckpt"), weights_only=None)


def test_async_checkpoint_plugin(tmp_path, monkeypatch):
    """Upstream test_async_checkpoint_plugin, on `CheckpointIO(background=True)` (no wrapped base IO:
    ours writes itself), with slow writes: validate, then fit; 3 saves, 1 removal, and the files
    that stay are the two newest, complete, each with its record."""
    slow_writes(monkeypatch, 0.1)
    checkpoint_plugin = CheckpointIO(background=True)
    checkpoint_plugin.save_checkpoint = Mock(wraps=checkpoint_plugin.save_checkpoint)
    checkpoint_plugin.remove_checkpoint = Mock(wraps=checkpoint_plugin.remove_checkpoint)
    ck = ModelCheckpoint(dirpath=tmp_path, save_top_k=2, monitor="step", mode="max")
    trainer = Trainer(default_root_dir=tmp_path, plugins=[checkpoint_plugin], callbacks=ck, max_epochs=3,
                      limit_train_batches=1, limit_val_batches=0, **TINY)
    assert trainer.strategy.checkpoint_io is checkpoint_plugin  # not wrapped, no TorchCheckpointIO injected
    trainer.validate(BoringModel())  # a teardown before the fit: saves still work after it
    trainer.fit(BoringModel())

    assert checkpoint_plugin.save_checkpoint.call_count == 3
    assert checkpoint_plugin.remove_checkpoint.call_count == 1
    assert {fn.name for fn in tmp_path.glob("*.ckpt")} == {"epoch=1-step=2.ckpt", "epoch=2-step=3.ckpt"}
    for name in ("epoch=1-step=2.ckpt", "epoch=2-step=3.ckpt"):  # teardown waited for the last one
        assert_recorded(tmp_path / name)
    assert torch.load(tmp_path / "epoch=2-step=3.ckpt", weights_only=True)["global_step"] == 3


def test_async_checkpoint_should_snapshot_values_before_mutation(tmp_path, monkeypatch):
    """Upstream test_async_checkpoint_should_snapshot_values_before_mutation: a tensor changed right
    after the save returns (training goes on) does not change what is written."""
    slow_writes(monkeypatch, 0.05)
    io = CheckpointIO(background=True)
    t = torch.tensor([0.0])
    io.save_checkpoint({"w": t}, path=tmp_path / "unused.ckpt")
    t.add_(1.0)
    io.teardown()
    saved = io.load_checkpoint(tmp_path / "unused.ckpt")
    assert torch.equal(saved["w"], torch.tensor([0.0]))
    assert torch.equal(t, torch.tensor([1.0]))


def test_storage_options_raise_type_error_as_torch_checkpoint_io(tmp_path):
    """Upstream test_trainer_save_checkpoint_storage_options: TorchCheckpointIO's TypeError."""
    trainer = Trainer(default_root_dir=tmp_path, plugins=[CheckpointIO()], max_epochs=1, limit_train_batches=1,
                      limit_val_batches=0, **TINY)
    trainer.fit(BoringModel())
    with pytest.raises(TypeError, match=r"`Trainer.save_checkpoint\(..., storage_options=...\)` with `storage_options` "
                                        r"arg is not supported for `CheckpointIO`"):
        trainer.save_checkpoint(tmp_path / "x.ckpt", storage_options=object())
    assert not (tmp_path / "x.ckpt").exists()


# ---- records, corruption -----------------------------------------------------------------------


def test_every_save_is_durable_with_a_record_and_loads_back(tmp_path):
    io = CheckpointIO()
    ck = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1, save_last=True, every_n_train_steps=1)
    model = BoringModel()
    trainer = Trainer(plugins=[io], callbacks=[ck], max_epochs=1, limit_train_batches=3, limit_val_batches=0,
                      default_root_dir=tmp_path, **TINY)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "manual" / "model.pt")  # a manual save, any extension, a new directory
    trainer.save_checkpoint(tmp_path / "manual" / ".hidden.ckpt")  # a hidden name: durable, no record
    names = sorted(p.name for p in (tmp_path / "ckpts").glob("*.ckpt"))
    assert names == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt", "last.ckpt"]
    for path in [*(tmp_path / "ckpts").glob("*.ckpt"), tmp_path / "manual" / "model.pt"]:
        assert_recorded(path)
        record = record_of(path)
        loaded = io.load_checkpoint(path)
        assert record["global_step"] == loaded["global_step"] and record["epoch"] == loaded["epoch"]
    assert record_of(tmp_path / "ckpts" / "last.ckpt")["global_step"] == 3
    assert not (tmp_path / "manual" / "..hidden.ckpt.json").exists()
    same_tensors(io.load_checkpoint(tmp_path / "manual" / ".hidden.ckpt")["state_dict"], model.state_dict())
    same_tensors(io.load_checkpoint(tmp_path / "manual" / "model.pt")["state_dict"], model.state_dict())
    assert not [n for n in os.listdir(tmp_path / "manual") if ".tmp-" in n]  # no temp files left


def ours_and_lightnings(tmp_path):
    """A checkpoint of ours, its state dict, and the same checkpoint as Lightning writes it."""
    model = BoringModel()
    trainer = Trainer(plugins=[CheckpointIO()], max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                      default_root_dir=tmp_path, enable_checkpointing=False, **TINY)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "ours.ckpt")
    trainer.strategy.checkpoint_io = TorchCheckpointIO()
    trainer.save_checkpoint(tmp_path / "theirs.ckpt")
    return tmp_path / "ours.ckpt", model.state_dict(), tmp_path / "theirs.ckpt"


def data_offset(path):
    """Where the bytes of the largest tensor start in a checkpoint (a zip archive of torch's)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len


def test_a_truncated_file_of_ours_fails_with_an_error_naming_it_and_its_record(tmp_path):
    ours, _, _ = ours_and_lightnings(tmp_path)
    size = os.path.getsize(ours)
    with open(ours, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(RuntimeError) as theirs:  # Lightning's own: torch's zip reader, nothing about why
        TorchCheckpointIO().load_checkpoint(ours)
    assert "record" not in str(theirs.value)
    with pytest.raises(RuntimeError, match=r"ours\.ckpt does not match its record .*\.ours\.ckpt\.json: ours\.ckpt has "
                                           rf"{size // 2} bytes, its record says {size} \(truncated") as mine:
        CheckpointIO().load_checkpoint(ours)
    assert isinstance(mine.value, loading.BadCheckpoint)


def test_flipped_bytes_in_a_file_of_ours_fail_where_lightning_loads_garbage(tmp_path):
    ours, state, _ = ours_and_lightnings(tmp_path)
    offset = data_offset(ours)
    with open(ours, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    garbage = TorchCheckpointIO().load_checkpoint(ours)["state_dict"]  # loads, silently altered
    assert not all(torch.equal(garbage[k], state[k]) for k in state)
    with pytest.raises(RuntimeError, match=r"does not match its record .*has CRC32 [0-9a-f]{8}, its record says"):
        CheckpointIO().load_checkpoint(ours)


def test_lightnings_own_errors_for_lightnings_own_cases(tmp_path):
    io = CheckpointIO()
    for missing in (tmp_path / "missing.ckpt", tmp_path / "nowhere" / "x.ckpt"):
        with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
            io.load_checkpoint(missing)
    (tmp_path / "empty.ckpt").write_bytes(b"")  # a peer's file (no record): the error Lightning's own load gives
    with pytest.raises(Exception) as theirs:
        TorchCheckpointIO().load_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(type(theirs.value)):
        io.load_checkpoint(tmp_path / "empty.ckpt")
    (tmp_path / "a_file").write_text("x")  # a parent that is a file: as Lightning's save fails
    with pytest.raises(FileExistsError):
        TorchCheckpointIO().save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a_file" / "x.ckpt")
    with pytest.raises(FileExistsError):
        io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a_file" / "x.ckpt")


class HparamsModel(BoringModel):
    def __init__(self, **hparams):
        super().__init__()
        self.save_hyperparameters()


def test_weights_only_allows_lightnings_own_types_and_yours(tmp_path):
    model = HparamsModel(nested=AttributeDict(lr=0.1), args=argparse.Namespace(seed=3))
    trainer = Trainer(plugins=[CheckpointIO()], max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                      default_root_dir=tmp_path, enable_checkpointing=False, **TINY)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "h.ckpt")
    with pytest.raises(pickle.UnpicklingError, match=r"h\.ckpt holds types that are not allowed.*argparse\.Namespace"
                                                     r".*CheckpointIO\(safe_globals=") as refused:
        CheckpointIO().load_checkpoint(tmp_path / "h.ckpt")
    assert "AttributeDict" not in str(refused.value)  # Lightning's own type is allowed
    assert isinstance(refused.value, loading.UnsafeCheckpoint)
    loaded = CheckpointIO(safe_globals=[argparse.Namespace]).load_checkpoint(tmp_path / "h.ckpt", weights_only=None)
    assert loaded["hyper_parameters"]["nested"] == AttributeDict(lr=0.1)
    assert loaded["hyper_parameters"]["args"].seed == 3
    assert CheckpointIO().load_checkpoint(tmp_path / "h.ckpt", weights_only=False)["hyper_parameters"]["args"].seed == 3
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for that load only
    # Lightning's own file of the same model: torch refuses to fill an AttributeDict under
    # weights_only even when the class is allowed; ours writes it as a call of the class with a dict.
    trainer.strategy.checkpoint_io = TorchCheckpointIO()
    trainer.save_checkpoint(tmp_path / "theirs.ckpt")
    with loading.allowing([AttributeDict, argparse.Namespace]):
        with pytest.raises(pickle.UnpicklingError, match="Can only SETITEM"):
            torch.load(tmp_path / "theirs.ckpt", weights_only=True)


# ---- background saves --------------------------------------------------------------------------


def test_a_failed_background_save_raises_at_teardown_once(tmp_path, monkeypatch):
    io = CheckpointIO(background=True)
    io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "run" / "a.ckpt")
    io.wait()
    slow_writes(monkeypatch, 0.2)
    io.save_checkpoint({"w": torch.ones(2)}, tmp_path / "run" / "b.ckpt")  # returns: the failure comes later
    shutil.rmtree(tmp_path / "run")
    (tmp_path / "run").write_text("the directory is now a file")  # the write in flight fails on the worker
    with pytest.raises(CheckpointSaveError, match=r"could not save checkpoint b\.ckpt in .*run"):
        io.teardown()
    io.teardown()  # raised once


def test_a_failed_background_save_fails_the_fit_at_the_next_save(tmp_path, monkeypatch):
    io = CheckpointIO(background=True)
    calls = []
    save_temp = durable.save_temp

    def fails_first(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return save_temp(*args, **kwargs)

    monkeypatch.setattr(durable, "save_temp", fails_first)
    ck = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    trainer = Trainer(plugins=[io], callbacks=[ck], max_epochs=3, limit_train_batches=1, limit_val_batches=0,
                      default_root_dir=tmp_path, **TINY)
    with pytest.raises(CheckpointSaveError, match=r"could not save checkpoint epoch=0-step=1\.ckpt.*No space left"):
        trainer.fit(BoringModel())
    assert len(calls) == 1  # the epoch-1 save raised before writing anything; teardown raised nothing more
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob(".*.json"))


def test_remove_and_load_wait_for_the_save_in_flight(tmp_path, monkeypatch):
    io = CheckpointIO(background=True)
    io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "old.ckpt")
    io.wait()
    slow_writes(monkeypatch, 0.3)
    io.save_checkpoint({"w": torch.ones(2)}, tmp_path / "new.ckpt")
    assert not (tmp_path / "new.ckpt").exists()  # still being written
    io.remove_checkpoint(tmp_path / "old.ckpt")  # ModelCheckpoint's order: the new one first, then the old goes
    assert (tmp_path / "new.ckpt").exists() and (tmp_path / ".new.ckpt.json").exists()
    assert not (tmp_path / "old.ckpt").exists() and not (tmp_path / ".old.ckpt.json").exists()

    io.save_checkpoint({"w": torch.full((2,), 2.0)}, tmp_path / "newer.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "newer.ckpt")["w"], torch.full((2,), 2.0))
    io.save_checkpoint({"w": torch.full((2,), 3.0)}, tmp_path / "gone.ckpt")
    io.remove_checkpoint(tmp_path / "gone.ckpt")  # not removed before it exists, then written after
    io.teardown()
    assert not (tmp_path / "gone.ckpt").exists() and not (tmp_path / ".gone.ckpt.json").exists()


def test_remove_takes_the_record_first_and_only_files_of_the_layout(tmp_path, caplog):
    io = CheckpointIO()
    io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "a.ckpt")
    (tmp_path / ".a.ckpt.rng").write_bytes(b"random state of our ModelCheckpoint")
    (tmp_path / "a.ckpt.bak").write_text("a user's file")
    (tmp_path / "dir.ckpt").mkdir()
    (tmp_path / "dir.ckpt" / "inside").write_text("x")
    order = []
    remove_file = durable.remove_file
    with pytest.MonkeyPatch.context() as m:
        m.setattr(durable, "remove_file", lambda p: (order.append(os.path.basename(p)), remove_file(p)))
        io.remove_checkpoint(tmp_path / "a.ckpt")
    assert order[0] == ".a.ckpt.json"
    assert sorted(os.listdir(tmp_path)) == [".trainer_ckpt.core.lock", "a.ckpt.bak", "dir.ckpt"]
    with caplog.at_level(logging.WARNING, logger="trainer_ckpt"):
        io.remove_checkpoint(tmp_path / "dir.ckpt")
        io.remove_checkpoint(tmp_path / ".trainer_ckpt.core.lock")
    assert (tmp_path / "dir.ckpt" / "inside").exists() and (tmp_path / ".trainer_ckpt.core.lock").exists()
    assert "not removing" in caplog.text
    io.remove_checkpoint(tmp_path / "never_there.ckpt")  # as Lightning's: nothing to do
    io.teardown()


def test_picklable_and_the_copy_saves_on_its_own(tmp_path):
    io = CheckpointIO(background=True, safe_globals=[argparse.Namespace])
    io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "a.ckpt")
    copy = pickle.loads(pickle.dumps(io))
    assert copy.background and copy.safe_globals == [argparse.Namespace] and copy._engines == {}
    io.teardown()
    copy.save_checkpoint({"w": torch.ones(2)}, tmp_path / "b.ckpt")
    assert torch.equal(copy.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.zeros(2))
    copy.teardown()
    assert_recorded(tmp_path / "b.ckpt")


# ---- interop, resume ---------------------------------------------------------------------------


def test_interop_both_ways(tmp_path):
    ours, state, theirs = ours_and_lightnings(tmp_path)
    assert not (tmp_path / ".theirs.ckpt.json").exists()
    # Lightning's file through ours (no record: loaded as Lightning loads it)
    same_tensors(CheckpointIO().load_checkpoint(theirs)["state_dict"], state)
    # ours through Lightning's IO, and plain torch.load(weights_only=True)
    same_tensors(TorchCheckpointIO().load_checkpoint(ours)["state_dict"], state)
    same_tensors(torch.load(ours, weights_only=True)["state_dict"], state)
    # ours -> Lightning -> ours: Lightning's IO replaces our file (a new inode); its record is outdated, the file is not corrupt
    inode = os.stat(ours).st_ino
    TorchCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((3,), 7.0)}}, ours)
    assert os.stat(ours).st_ino != inode and (tmp_path / ".ours.ckpt.json").exists()
    assert torch.equal(CheckpointIO().load_checkpoint(ours)["state_dict"]["w"], torch.full((3,), 7.0))


class StepModel(BoringModel):
    """Notes the global step of its first training batch and its weights when training starts."""

    def __init__(self):
        super().__init__()
        self.first_step, self.start_state = None, None

    def on_train_start(self):
        self.start_state = {k: v.clone() for k, v in self.state_dict().items()}

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = self.trainer.global_step
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("writer", ["ours", "lightning"])
def test_fit_resumes_through_ours_at_the_checkpoints_step(tmp_path, writer):
    torch.manual_seed(0)
    first = Trainer(plugins=[CheckpointIO()] if writer == "ours" else [], callbacks=[ModelCheckpoint(dirpath=tmp_path)],
                    max_epochs=1, limit_train_batches=3, limit_val_batches=0, default_root_dir=tmp_path, **TINY)
    first.fit(StepModel())
    path = tmp_path / "epoch=0-step=3.ckpt"
    assert (tmp_path / ".epoch=0-step=3.ckpt.json").exists() == (writer == "ours")
    saved = torch.load(path, weights_only=True)

    io = CheckpointIO()
    io.load_checkpoint = Mock(wraps=io.load_checkpoint)
    model = StepModel()
    second = Trainer(plugins=[io], callbacks=[ModelCheckpoint(dirpath=tmp_path)], max_epochs=2, limit_train_batches=3,
                     limit_val_batches=0, default_root_dir=tmp_path, **TINY)
    second.fit(model, ckpt_path=path)
    io.load_checkpoint.assert_called_once_with(path, weights_only=None)
    assert model.first_step == saved["global_step"] == 3
    same_tensors(model.start_state, saved["state_dict"])
    assert second.global_step == 6
    assert_recorded(tmp_path / "epoch=1-step=6.ckpt")
