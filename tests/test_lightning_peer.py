"""
Lightning's own tests of `ModelCheckpoint`, adapted: each runs against Lightning 2.6.6's callback and
against ours (`checkpoint_cls`: "lightning", "ours"), with the same assertions, as evidence that
`trainer_ckpt.lightning.ModelCheckpoint` is a drop-in.

Source: Lightning-AI/pytorch-lightning (master 7f0c343), tests/tests_pytorch/checkpointing/
test_model_checkpoint.py, test_checkpoint_callback_frequency.py, test_trainer_checkpoint.py.
Adaptations (only where ours differs by design, or for time on two CPU cores):
- directory listings skip hidden files (our `.{file}.json` record and `.{file}.rng` random state,
  the directory's lock) and a `corrupt/` folder (`visible`);
- saves are counted by wrapping `_save_checkpoint` on the class under test (`count_saves`), not by
  mocking `trainer.save_checkpoint` or `torch.save`, which ours does not call;
- where upstream relies on the Trainer's default callback, the test passes `checkpoint_cls()`;
- smaller runs (limit_train_batches, limit_val_batches, logger=False unless the logger decides the
  directory, no progress bar or model summary);
- `test_find_last_checkpoints` differs by design: Lightning's answer is every `last*` file, ours the
  newest checkpoint that verifies (an empty touched file is not a checkpoint).
DDP/GPU (RunIf), jsonargparse, omegaconf and train_time_interval (a mocked clock) tests are left out.
Two tests join upstream ones to the connector's `fit(ckpt_path="last")` with a FILE_EXTENSION other than
`.ckpt` (`..._file_extension_resume_last`, `test_find_last_checkpoints_other_extension`).
"""
import math
import os
import pickle
import re
from argparse import Namespace
from datetime import timedelta
from pathlib import Path
from unittest import mock
from unittest.mock import Mock

import cloudpickle
import pytest
import torch
import yaml
from torch import optim
from torch.utils.data import DataLoader

from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel, RandomIterableDataset
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from trainer_ckpt.lightning import ModelCheckpoint as OurModelCheckpoint

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def both(ours_xfail=None):
    """The two classes under test; `ours_xfail`: a known trainer_ckpt bug that fails ours only (strict)."""
    ours_marks = [pytest.mark.xfail(strict=True, reason=f"trainer_ckpt bug: {ours_xfail}")] if ours_xfail else []
    return [pytest.param(LightningModelCheckpoint, id="lightning"),
            pytest.param(OurModelCheckpoint, id="ours", marks=ours_marks)]


@pytest.fixture(params=both())
def checkpoint_cls(request):
    return request.param


def visible(directory):
    """`os.listdir` without our hidden side files and `corrupt/` (by design)."""
    return [f for f in os.listdir(directory) if not f.startswith(".") and f != "corrupt"]


def count_saves(monkeypatch, cls):
    """The file paths `cls._save_checkpoint` is called with (what upstream counts with a mocked
    `trainer.save_checkpoint` or `torch.save`: one call per file written)."""
    calls = []
    original = cls._save_checkpoint

    def _save_checkpoint(self, trainer, filepath):
        calls.append(str(filepath))
        return original(self, trainer, filepath)

    monkeypatch.setattr(cls, "_save_checkpoint", _save_checkpoint)
    return calls


class LogInTwoMethods(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("early_stop_on", out["loss"])
        return out

    def on_validation_epoch_end(self):
        self.log("val_acc", torch.tensor(1.23))


def mock_training_epoch_loop(trainer):
    calls = {}
    old_get_monitor_value = trainer.fit_loop.epoch_loop._get_monitor_value

    def mock_(key):
        value = old_get_monitor_value(key)
        calls[trainer.current_epoch] = {key: value}
        return value

    trainer.fit_loop.epoch_loop._get_monitor_value = mock_
    return calls


# --- test_model_checkpoint.py -------------------------------------------------------------------


def test_model_checkpoint_state_key(checkpoint_cls):
    # the same key as Lightning's: ours restores its state from Lightning's checkpoints and back
    early_stopping = checkpoint_cls(monitor="val_loss")
    expected_id = (
        "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1,"
        " 'train_time_interval': None}"
    )
    assert early_stopping.state_key == expected_id


@pytest.mark.parametrize(
    ("validation_step_none", "val_dataloaders_none", "monitor"),
    [(False, False, "val_log"), (True, False, "train_log_epoch")],
)
@pytest.mark.parametrize("reduce_lr_on_plateau", [False, True])
def test_model_checkpoint_score_and_ckpt(
    checkpoint_cls, tmp_path, validation_step_none, val_dataloaders_none, monitor, reduce_lr_on_plateau
):
    max_epochs = 3
    limit_train_batches = 5
    limit_val_batches = 7
    lr, gamma = 1e-1, 2

    class CustomBoringModel(BoringModel):
        def __init__(self):
            super().__init__()
            self.train_log_epochs = torch.randn(max_epochs, limit_train_batches)
            self.val_logs = torch.randn(max_epochs, limit_val_batches)
            self.scores = []

        def training_step(self, batch, batch_idx):
            log_value = self.train_log_epochs[self.current_epoch, batch_idx]
            self.log("train_log", log_value, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            log_value = self.val_logs[self.current_epoch, batch_idx]
            self.log("val_log", log_value)
            return super().validation_step(batch, batch_idx)

        def configure_optimizers(self):
            optimizer = optim.SGD(self.parameters(), lr=lr)
            if reduce_lr_on_plateau:
                lr_scheduler = {
                    "scheduler": optim.lr_scheduler.ReduceLROnPlateau(optimizer),
                    "monitor": monitor,
                    "strict": True,
                }
            else:
                lr_scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
            return [optimizer], [lr_scheduler]

        def on_train_epoch_end(self):
            if "train" in monitor:
                self.scores.append(self.trainer.logged_metrics[monitor])

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking and "val" in monitor:
                self.scores.append(self.trainer.logged_metrics[monitor])

    filename = "{" + f"{monitor}" + ":.4f}-{epoch}"
    checkpoint = checkpoint_cls(dirpath=tmp_path, filename=filename, monitor=monitor, save_top_k=-1)

    model = CustomBoringModel()
    if validation_step_none:
        model.validation_step = None
    if val_dataloaders_none:
        model.val_dataloaders = None

    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint],
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        max_epochs=max_epochs,
        logger=False,
        **QUIET,
    )
    calls = mock_training_epoch_loop(trainer)
    trainer.fit(model)

    ckpt_files = list(tmp_path.glob("*.ckpt"))
    assert len(ckpt_files) == len(model.scores) == max_epochs

    for epoch in range(max_epochs):
        score = model.scores[epoch]
        expected_score = getattr(model, f"{monitor}s")[epoch].mean().item()
        assert math.isclose(score, expected_score, abs_tol=1e-5)

        expected_filename = f"{monitor}={score:.4f}-epoch={epoch}.ckpt"
        chk = pl_load(os.path.join(checkpoint.dirpath, expected_filename))
        assert chk["epoch"] == epoch
        assert chk["global_step"] == limit_train_batches * (epoch + 1)

        mc_specific_data = chk["callbacks"][
            f"ModelCheckpoint{{'monitor': '{monitor}', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1,"
            " 'train_time_interval': None}"
        ]
        assert mc_specific_data["dirpath"] == checkpoint.dirpath
        assert mc_specific_data["monitor"] == monitor
        assert mc_specific_data["current_score"] == score

        if not reduce_lr_on_plateau:
            actual_step_count = chk["lr_schedulers"][0]["_step_count"]
            actual_lr = chk["lr_schedulers"][0]["_last_lr"][0]
            assert actual_step_count == epoch + 2
            assert actual_lr == lr * gamma ** (epoch + 1)
        else:
            assert calls[epoch] == {monitor: score}


@pytest.mark.parametrize("save_top_k", [-1, 0, 1, 2])
def test_model_checkpoint_with_non_string_input(checkpoint_cls, tmp_path, save_top_k):
    """dirpath=None in checkpoint callback is valid and ckpt_path is set correctly."""
    model = LogInTwoMethods()
    checkpoint = checkpoint_cls(monitor="early_stop_on", dirpath=None, filename="{epoch}", save_top_k=save_top_k)
    max_epochs = 2
    trainer = Trainer(
        default_root_dir=tmp_path, callbacks=[checkpoint], overfit_batches=0.20, max_epochs=max_epochs, logger=False,
        limit_val_batches=2, **QUIET,
    )
    trainer.fit(model)
    assert checkpoint.dirpath == str(tmp_path / "checkpoints")

    if save_top_k == -1:
        ckpt_files = visible(checkpoint.dirpath)
        expected_ckpt_files = [f"epoch={i}.ckpt" for i in range(max_epochs)]
        assert len(ckpt_files) == len(expected_ckpt_files) == max_epochs
        assert set(ckpt_files) == set(expected_ckpt_files)


@pytest.mark.parametrize("save_top_k", [-1, 1])
def test_model_checkpoint_to_yaml(checkpoint_cls, tmp_path, save_top_k):
    model = LogInTwoMethods()
    checkpoint = checkpoint_cls(dirpath=tmp_path, monitor="early_stop_on", save_top_k=save_top_k)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[checkpoint], overfit_batches=0.20, max_epochs=2,
                      limit_val_batches=2, logger=False, **QUIET)
    trainer.fit(model)

    path_yaml = tmp_path / "best_k_models.yaml"
    checkpoint.to_yaml(path_yaml)
    with open(path_yaml) as fopen:
        d = yaml.full_load(fopen)
    assert d == dict(checkpoint.best_k_models.items())


@pytest.mark.parametrize(("logger_version", "expected"), [(None, "version_0"), (1, "version_1"), ("awesome", "awesome")])
def test_model_checkpoint_path(checkpoint_cls, tmp_path, logger_version, expected):
    """The "version_" prefix is only added when the logger's version is an integer (the logger decides the dir)."""
    model = LogInTwoMethods()
    logger = TensorBoardLogger(tmp_path, version=logger_version)
    trainer = Trainer(default_root_dir=tmp_path, overfit_batches=0.2, max_epochs=2, logger=logger,
                      limit_val_batches=2, callbacks=[checkpoint_cls()], **QUIET)
    trainer.fit(model)

    ckpt_version = Path(trainer.checkpoint_callback.dirpath).parent.name
    assert ckpt_version == expected
    assert len(visible(trainer.checkpoint_callback.dirpath)) == 1


def test_pickling(checkpoint_cls, tmp_path):
    ckpt = checkpoint_cls(dirpath=tmp_path)

    ckpt_loaded = pickle.loads(pickle.dumps(ckpt))
    assert vars(ckpt) == vars(ckpt_loaded)

    ckpt_loaded = cloudpickle.loads(cloudpickle.dumps(ckpt))
    assert vars(ckpt) == vars(ckpt_loaded)


def test_model_checkpoint_file_extension(checkpoint_cls, tmp_path):
    """ModelCheckpoint with another file extension (a subclass setting FILE_EXTENSION)."""
    extension_cls = type("ModelCheckpointExtensionTest", (checkpoint_cls,), {"FILE_EXTENSION": ".tpkc"})
    model = LogInTwoMethods()
    model_checkpoint = extension_cls(monitor="early_stop_on", dirpath=tmp_path, save_top_k=1, save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[model_checkpoint], max_steps=1, logger=False, **QUIET)
    trainer.fit(model)

    expected = ["epoch=0-step=1.tpkc", "last.tpkc"]
    assert set(expected) == set(visible(tmp_path))


@pytest.mark.parametrize("checkpoint_cls", both())
def test_model_checkpoint_file_extension_resume_last(checkpoint_cls, tmp_path):
    """test_model_checkpoint_file_extension, then fit(ckpt_path="last") (the connector asks the callback's
    `_find_last_checkpoints`, which upstream test_find_last_checkpoints covers with FILE_EXTENSION)."""
    extension_cls = type("ModelCheckpointExtensionTest", (checkpoint_cls,), {"FILE_EXTENSION": ".tpkc"})
    kwargs = dict(limit_train_batches=2, limit_val_batches=0, logger=False, **QUIET)
    Trainer(max_epochs=2, callbacks=[extension_cls(dirpath=tmp_path, save_last=True)], **kwargs).fit(BoringModel())
    assert set(visible(tmp_path)) == {"epoch=1-step=4.tpkc", "last.tpkc"}

    trainer = Trainer(max_epochs=3, callbacks=[extension_cls(dirpath=tmp_path, save_last=True)], **kwargs)
    trainer.fit(BoringModel(), ckpt_path="last")
    assert trainer.ckpt_path is not None and Path(trainer.ckpt_path).name in {"last.tpkc", "epoch=1-step=4.tpkc"}
    assert set(visible(tmp_path)) == {"epoch=2-step=6.tpkc", "last.tpkc"}


@pytest.mark.parametrize("save_last", [True, "link"])
def test_model_checkpoint_save_last(checkpoint_cls, save_last, tmp_path, monkeypatch):
    """save_last produces only one last checkpoint."""
    seed_everything()
    model = LogInTwoMethods()
    epochs = 3
    monkeypatch.setattr(checkpoint_cls, "CHECKPOINT_NAME_LAST", "last-{epoch}")
    model_checkpoint = checkpoint_cls(monitor="early_stop_on", dirpath=tmp_path, save_top_k=-1, save_last=save_last)
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[model_checkpoint],
        max_epochs=epochs,
        limit_train_batches=10,
        limit_val_batches=2,
        logger=False,
        **QUIET,
    )
    trainer.fit(model)
    last_filename = model_checkpoint._format_checkpoint_name(
        checkpoint_cls.CHECKPOINT_NAME_LAST, {"epoch": trainer.current_epoch - 1}
    )
    last_filename = last_filename + ".ckpt"
    assert str(tmp_path / last_filename) == model_checkpoint.last_model_path
    assert set(visible(tmp_path)) == set(
        [f"epoch={i}-step={j}.ckpt" for i, j in zip(range(epochs), [10, 20, 30])] + [last_filename]
    )
    if save_last == "link":
        assert os.path.islink(tmp_path / last_filename)
    else:
        assert os.path.isfile(tmp_path / last_filename)
    assert os.path.realpath(tmp_path / last_filename) == model_checkpoint._last_checkpoint_saved


def test_model_checkpoint_link_checkpoint(checkpoint_cls, tmp_path):
    """Linking a checkpoint works and overwrites an existing link, file or folder."""
    trainer = Mock()

    file = tmp_path / "file"
    file.touch()
    link = tmp_path / "link"
    checkpoint_cls._link_checkpoint(trainer, filepath=str(file), linkpath=str(link))
    assert os.path.islink(link)
    assert os.path.realpath(link) == str(file)
    assert not os.path.isabs(os.readlink(link))

    new_file1 = tmp_path / "new_file1"
    new_file1.touch()
    checkpoint_cls._link_checkpoint(trainer, filepath=str(new_file1), linkpath=str(link))
    assert os.path.islink(link)
    assert os.path.realpath(link) == str(new_file1)

    folder = tmp_path / "folder"
    folder.mkdir()
    folder_link = tmp_path / "folder_link"
    folder_link.mkdir()
    checkpoint_cls._link_checkpoint(trainer, filepath=str(folder), linkpath=str(folder_link))
    assert os.path.islink(folder_link)
    assert os.path.realpath(folder_link) == str(folder)
    assert not os.path.isabs(os.readlink(folder_link))

    # no symlinks (Windows without privileges): copy instead
    file = tmp_path / "win_file"
    file.touch()
    link = tmp_path / "win_link"
    with mock.patch("lightning.pytorch.callbacks.model_checkpoint.os.symlink", Mock(side_effect=OSError)):
        checkpoint_cls._link_checkpoint(trainer, filepath=str(file), linkpath=str(link))
    assert not os.path.islink(link)
    assert os.path.isfile(link)


def test_invalid_arguments(checkpoint_cls, tmp_path):
    """test_invalid_top_k, test_none_monitor_top_k, test_invalid_every_n_epochs, test_invalid_every_n_train_steps,
    test_invalid_trigger_combination, test_model_checkpoint_mode_options: the same validation, the same messages."""
    with pytest.raises(MisconfigurationException, match=r".*Must be >= -1"):
        checkpoint_cls(dirpath=tmp_path, save_top_k=-3)
    with pytest.raises(MisconfigurationException, match=r"ModelCheckpoint\(save_top_k=3, monitor=None\) is not a valid*"):
        checkpoint_cls(dirpath=tmp_path, save_top_k=3)
    for top_k in (-1, 0, 1):
        checkpoint_cls(dirpath=tmp_path, save_top_k=top_k)
    with pytest.raises(MisconfigurationException, match=r".*Must be >= 0"):
        checkpoint_cls(dirpath=tmp_path, every_n_epochs=-3)
    with pytest.raises(MisconfigurationException, match=r".*Must be >= 0"):
        checkpoint_cls(dirpath=tmp_path, every_n_train_steps=-3)
    with pytest.raises(MisconfigurationException, match=r".*Combination of parameters every_n_train_steps"):
        checkpoint_cls(dirpath=tmp_path, every_n_train_steps=1, every_n_epochs=2)
    with pytest.raises(MisconfigurationException, match=r".*Combination of parameters every_n_train_steps"):
        checkpoint_cls(train_time_interval=timedelta(minutes=1), every_n_epochs=2)
    with pytest.raises(MisconfigurationException, match="`mode` can be .* but got unknown_option"):
        checkpoint_cls(mode="unknown_option")
    checkpoint_cls(dirpath=tmp_path, every_n_train_steps=0, every_n_epochs=3)
    checkpoint_cls(dirpath=tmp_path, every_n_train_steps=4, every_n_epochs=0)
    checkpoint_cls(dirpath=tmp_path, every_n_train_steps=0, every_n_epochs=0, train_time_interval=timedelta(minutes=1))
    callback = checkpoint_cls(dirpath=tmp_path)
    assert callback.every_n_epochs == 1
    assert callback._every_n_train_steps == 0


def test_none_monitor_not_alternating(checkpoint_cls, tmp_path):
    """Regression: no alternating `model.ckpt` and `model-v1.ckpt` files."""
    seen = []

    class ListDirModel(BoringModel):
        def on_train_epoch_start(self):
            if self.current_epoch > 0:
                seen.append(visible(tmp_path))
                assert visible(tmp_path) == ["model.ckpt"]

    model = ListDirModel()
    model_checkpoint = checkpoint_cls(dirpath=tmp_path, monitor=None, save_top_k=1, filename="model")
    trainer = Trainer(callbacks=model_checkpoint, limit_train_batches=1, limit_val_batches=0, max_epochs=3,
                      logger=False, **QUIET)
    trainer.fit(model)
    assert seen == [["model.ckpt"], ["model.ckpt"]]


def test_model_checkpoint_save_last_none_monitor(checkpoint_cls, tmp_path):
    """It is possible to save all checkpoints when monitor=None."""
    seed_everything()
    model = LogInTwoMethods()
    epochs = 2
    checkpoint_callback = checkpoint_cls(monitor=None, dirpath=tmp_path, save_top_k=-1, save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[checkpoint_callback], limit_train_batches=10,
                      limit_val_batches=2, max_epochs=epochs, logger=False, **QUIET)
    trainer.fit(model)

    assert checkpoint_callback.monitor is None
    assert checkpoint_callback.best_model_path == str(tmp_path / "epoch=1-step=20.ckpt")
    assert checkpoint_callback.last_model_path == str(tmp_path / "last.ckpt")
    assert checkpoint_callback.best_model_score is None
    assert checkpoint_callback.best_k_models == {}
    assert checkpoint_callback.kth_best_model_path == ""

    expected = [f"epoch={i}-step={j}.ckpt" for i, j in zip(range(epochs), [10, 20])]
    expected.append("last.ckpt")
    assert set(visible(tmp_path)) == set(expected)
    assert os.path.isfile(tmp_path / "last.ckpt")


@pytest.mark.parametrize("every_n_epochs", list(range(4)))
def test_model_checkpoint_every_n_epochs(checkpoint_cls, tmp_path, every_n_epochs):
    model = LogInTwoMethods()
    epochs = 5
    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, filename="{epoch}", save_top_k=-1,
                                         every_n_epochs=every_n_epochs)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[checkpoint_callback], max_epochs=epochs,
                      limit_train_batches=1, limit_val_batches=1, logger=False, **QUIET)
    trainer.fit(model)

    expected = [f"epoch={e}.ckpt" for e in range(epochs) if not (e + 1) % every_n_epochs] if every_n_epochs > 0 else []
    assert set(visible(tmp_path)) == set(expected)


def test_ckpt_every_n_train_steps(checkpoint_cls, tmp_path):
    """Checkpoints are saved every n training steps (upstream: 16 of 64 batches; here 4 of 16)."""
    model = LogInTwoMethods()
    every_n_train_steps = 4
    max_epochs = 2
    epoch_length = 16
    checkpoint_callback = checkpoint_cls(
        filename="{step}",
        every_n_epochs=0,
        every_n_train_steps=every_n_train_steps,
        dirpath=tmp_path,
        save_top_k=-1,
        save_last=False,
    )
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=max_epochs, limit_train_batches=epoch_length,
                      limit_val_batches=1, callbacks=[checkpoint_callback], logger=False, **QUIET)
    trainer.fit(model)
    expected = [
        f"step={i}.ckpt" for i in range(every_n_train_steps, max_epochs * epoch_length + 1, every_n_train_steps)
    ]
    assert set(visible(tmp_path)) == set(expected)


def test_model_checkpoint_on_exception_run_condition_on_validation_start(checkpoint_cls, tmp_path):
    """No checkpoint when an exception is raised during the sanity check."""

    class TroubledModelSanityCheck(BoringModel):
        def on_validation_start(self) -> None:
            if self.trainer.sanity_checking:
                raise RuntimeError("Trouble!")

    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, filename="sanity_check", save_on_exception=True)
    trainer = Trainer(default_root_dir=tmp_path, num_sanity_val_steps=4, limit_train_batches=2,
                      callbacks=[checkpoint_callback], max_epochs=2, logger=False, **QUIET)
    with pytest.raises(RuntimeError, match="Trouble!"):
        trainer.fit(TroubledModelSanityCheck())
    assert not os.path.isfile(tmp_path / "exception-sanity_check.ckpt")
    assert not os.path.isfile(tmp_path / "sanity_check.ckpt")


def test_model_checkpoint_on_exception_run_condition_on_train_batch_start(checkpoint_cls, tmp_path):
    """No checkpoint on exception when one was already saved at the current training step."""

    class TroubledModelAlreadySavedCheckpoint(BoringModel):
        def on_train_batch_start(self, batch, batch_idx) -> None:
            if self.trainer.global_step == 1:
                raise RuntimeError("Trouble!")

    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, filename="already_saved", save_on_exception=True,
                                         every_n_train_steps=1)
    trainer = Trainer(default_root_dir=tmp_path, limit_train_batches=2, callbacks=[checkpoint_callback],
                      max_epochs=2, logger=False, **QUIET)
    with pytest.raises(RuntimeError, match="Trouble!"):
        trainer.fit(TroubledModelAlreadySavedCheckpoint())

    assert not os.path.isfile(tmp_path / "exception-already_saved.ckpt")
    assert os.path.isfile(tmp_path / "already_saved.ckpt")


class TroubledModelInTrainingStep(BoringModel):
    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("Trouble!")


class TroubledModelInValidationStep(BoringModel):
    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking and batch_idx == 1:
            raise RuntimeError("Trouble!")


class TroubledModelOnTrainBatchEnd(BoringModel):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("Trouble!")


class TroubledModelOnTrainEpochEnd(BoringModel):
    def on_train_epoch_end(self):
        if self.current_epoch == 1:
            raise RuntimeError("Trouble!")


class TroubledModelOnValidationEnd(BoringModel):
    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            raise RuntimeError("Trouble!")


class TroubledModelOnTrainEnd(BoringModel):
    def on_train_end(self):
        raise RuntimeError("Trouble!")


class TroubledModelOnFitEnd(BoringModel):
    def on_fit_end(self):
        raise RuntimeError("Trouble!")


class TroubledModelOptimizerStep(BoringModel):
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        optimizer.step(closure=optimizer_closure)
        if self.current_epoch == 1:
            raise RuntimeError("Trouble!")


class TroubledCallbackOnTrainBatchStart(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("Trouble!")


@pytest.mark.parametrize(
    "troubled",
    [
        TroubledModelInTrainingStep,
        TroubledModelInValidationStep,
        TroubledModelOnTrainBatchEnd,
        TroubledModelOnTrainEpochEnd,
        TroubledModelOnValidationEnd,
        TroubledModelOnTrainEnd,
        TroubledModelOnFitEnd,
        TroubledModelOptimizerStep,
        TroubledCallbackOnTrainBatchStart,
    ],
)
def test_model_checkpoint_on_exception_parametrized(checkpoint_cls, tmp_path, troubled):
    """The checkpoint is saved when an exception is raised in a LightningModule (or a callback)."""
    if issubclass(troubled, Callback):
        model, callbacks = BoringModel(), [troubled()]
    else:
        model, callbacks = troubled(), []
    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, filename="exception", save_on_exception=True,
                                         every_n_epochs=7)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[*callbacks, checkpoint_callback], limit_train_batches=2,
                      limit_val_batches=2, max_epochs=4, logger=False, **QUIET)

    with pytest.raises(RuntimeError, match="Trouble!"):
        trainer.fit(model)

    checkpoint_path = tmp_path / "exception.ckpt"
    assert os.path.isfile(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"] is not None
    assert checkpoint["state_dict"] != {}


def test_model_checkpoint_topk_zero(checkpoint_cls, tmp_path):
    """No checkpoints are saved when save_top_k=0 (only last)."""
    model = LogInTwoMethods()
    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, save_top_k=0, save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[checkpoint_callback], max_epochs=2, limit_train_batches=2,
                      limit_val_batches=1, logger=False, **QUIET)
    trainer.fit(model)
    assert checkpoint_callback.monitor is None
    assert checkpoint_callback.best_model_path == ""
    assert checkpoint_callback.best_model_score is None
    assert checkpoint_callback.best_k_models == {}
    assert checkpoint_callback.kth_best_model_path == ""
    assert visible(tmp_path) == ["last.ckpt"]
    assert checkpoint_callback.last_model_path == str(tmp_path / "last.ckpt")
    assert not os.path.islink(checkpoint_callback.last_model_path)


def test_model_checkpoint_topk_all(checkpoint_cls, tmp_path):
    """save_top_k=-1 tracks the best models when a monitor key is provided."""
    seed_everything(1000)
    epochs = 3
    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, filename="{epoch}", monitor="epoch", mode="max",
                                         save_top_k=-1)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[checkpoint_callback], max_epochs=epochs, logger=False,
                      val_check_interval=1.0, limit_train_batches=2, limit_val_batches=1, **QUIET)
    trainer.fit(BoringModel())

    assert checkpoint_callback.monitor == "epoch"
    assert checkpoint_callback.best_model_path == str(tmp_path / "epoch=2.ckpt")
    assert checkpoint_callback.best_model_score == epochs - 1
    assert len(visible(tmp_path)) == len(checkpoint_callback.best_k_models) == epochs
    assert set(checkpoint_callback.best_k_models.keys()) == {str(tmp_path / f"epoch={i}.ckpt") for i in range(epochs)}
    assert checkpoint_callback.kth_best_model_path == str(tmp_path / "epoch=0.ckpt")


def test_default_checkpoint_behavior(checkpoint_cls, tmp_path, monkeypatch):
    """The default callback (upstream: the Trainer's own; here `checkpoint_cls()`) saves every epoch, keeps the last."""
    seed_everything(1234)
    saves = count_saves(monkeypatch, checkpoint_cls)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=5, limit_val_batches=5,
                      logger=False, callbacks=[checkpoint_cls()], **QUIET)
    trainer.fit(LogInTwoMethods())
    results = trainer.test(verbose=False)

    assert len(results) == 1
    save_dir = tmp_path / "checkpoints"
    assert saves == [str(save_dir / f"epoch={e}-step={s}.ckpt") for e, s in [(0, 5), (1, 10), (2, 15)]]
    assert visible(save_dir) == ["epoch=2-step=15.ckpt"]


def test_model_checkpoint_save_last_checkpoint_contents(checkpoint_cls, tmp_path):
    """The save_last checkpoint contains the latest information."""
    seed_everything(100)
    model = LogInTwoMethods()
    num_epochs = 3
    model_checkpoint = checkpoint_cls(monitor="early_stop_on", dirpath=tmp_path, filename="{epoch}",
                                      save_top_k=num_epochs, save_last=True)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[model_checkpoint], max_epochs=num_epochs,
                      limit_train_batches=2, limit_val_batches=2, logger=False, **QUIET)
    trainer.fit(model)

    path_last_epoch = str(tmp_path / f"epoch={num_epochs - 1}.ckpt")
    path_last = str(tmp_path / "last.ckpt")
    assert path_last == model_checkpoint.last_model_path
    assert os.path.isfile(path_last_epoch)
    assert os.path.isfile(path_last)

    ckpt_last_epoch = torch.load(path_last_epoch, weights_only=True)
    ckpt_last = torch.load(path_last, weights_only=True)
    assert ckpt_last_epoch["epoch"] == ckpt_last["epoch"]
    assert ckpt_last_epoch["global_step"] == ckpt_last["global_step"]

    ckpt_id = (
        "ModelCheckpoint{'monitor': 'early_stop_on', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1,"
        " 'train_time_interval': None}"
    )
    assert ckpt_last["callbacks"][ckpt_id] == ckpt_last_epoch["callbacks"][ckpt_id]

    model_last_epoch = LogInTwoMethods.load_from_checkpoint(path_last_epoch)
    model_last = LogInTwoMethods.load_from_checkpoint(model_checkpoint.last_model_path)
    for w0, w1 in zip(model_last_epoch.parameters(), model_last.parameters()):
        assert w0.eq(w1).all()


@pytest.mark.parametrize("mode", ["min", "max"])
def test_checkpointing_with_nan_as_first(checkpoint_cls, tmp_path, monkeypatch, mode):
    monitor = [float("nan")]
    monitor += [5, 7, 8] if mode == "max" else [8, 7, 5]

    class CurrentModel(LogInTwoMethods):
        def on_validation_epoch_end(self):
            self.log("abc", monitor[self.current_epoch])

    saves = count_saves(monkeypatch, checkpoint_cls)
    callback = checkpoint_cls(monitor="abc", mode=mode, save_top_k=1, dirpath=tmp_path)
    trainer = Trainer(callbacks=[callback], default_root_dir=tmp_path, val_check_interval=1.0,
                      max_epochs=len(monitor), limit_train_batches=2, limit_val_batches=1, logger=False, **QUIET)
    trainer.fit(CurrentModel())

    assert len(saves) == len(monitor)
    assert mode == "min" and callback.best_model_score == 5 or mode == "max" and callback.best_model_score == 8


def test_checkpoint_repeated_strategy(checkpoint_cls, tmp_path):
    """fit/test can be called several times from a checkpoint without writing anything new."""
    checkpoint_callback = checkpoint_cls(monitor="val_loss", dirpath=tmp_path, filename="{epoch:02d}")

    class ExtendedBoringModel(BoringModel):
        def validation_step(self, batch, batch_idx):
            loss = self.step(batch)
            self.log("val_loss", loss)

    model = ExtendedBoringModel()
    trainer_kwargs = {
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 2,
        "limit_test_batches": 2,
        "log_every_n_steps": 1,
        "default_root_dir": tmp_path,
        "logger": CSVLogger(tmp_path),
        **QUIET,
    }
    trainer = Trainer(**trainer_kwargs, callbacks=[checkpoint_callback])
    trainer.fit(model)
    assert set(visible(tmp_path)) == {"epoch=00.ckpt", "lightning_logs"}

    for _ in range(3):
        trainer = Trainer(**trainer_kwargs, callbacks=[checkpoint_cls()])
        trainer.fit(model, ckpt_path=checkpoint_callback.best_model_path)
        trainer.test(ckpt_path=checkpoint_callback.best_model_path, verbose=False)
        assert set(visible(tmp_path)) == {"epoch=00.ckpt", "lightning_logs"}

    assert set(os.listdir(tmp_path / "lightning_logs")) == {"version_0"}


def test_current_score(checkpoint_cls, tmp_path):
    """current_score is correct and saved."""

    class TestModel(BoringModel):
        def training_step(self, *args):
            self.log("foo", (self.current_epoch + 1) / 10)
            return super().training_step(*args)

    model_checkpoint = checkpoint_cls(dirpath=tmp_path, save_top_k=3, monitor="foo", mode="min")
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=1,
                      callbacks=[model_checkpoint], logger=False, **QUIET)
    trainer.fit(TestModel())
    assert model_checkpoint.current_score == 0.3
    ckpts = [torch.load(tmp_path / name, weights_only=True) for name in visible(tmp_path)]
    ckpts = [
        ckpt["callbacks"][
            "ModelCheckpoint{'monitor': 'foo', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1,"
            " 'train_time_interval': None}"
        ]
        for ckpt in ckpts
    ]
    assert sorted(ckpt["current_score"] for ckpt in ckpts) == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_current_score_when_nan(checkpoint_cls, tmp_path, mode):
    class TestModel(BoringModel):
        def training_step(self, *args):
            self.log("foo", float("nan"))
            return super().training_step(*args)

    model_checkpoint = checkpoint_cls(dirpath=tmp_path, save_top_k=1, monitor="foo", mode=mode)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                      callbacks=[model_checkpoint], logger=False, **QUIET)
    trainer.fit(TestModel())
    expected = float("inf" if mode == "min" else "-inf")
    assert model_checkpoint.best_model_score == expected
    assert model_checkpoint.current_score == expected


def test_ckpt_version_after_rerun_new_trainer(checkpoint_cls, tmp_path):
    """Previous checkpoints get the version suffix when new trainer instances are used."""
    epochs = 2
    for i in range(epochs):
        mc = checkpoint_cls(dirpath=tmp_path, save_top_k=-1, monitor="epoch", filename="{epoch}")
        trainer = Trainer(max_epochs=epochs, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                          callbacks=[mc], logger=False, **QUIET)
        trainer.fit(BoringModel())
        expected = {"epoch=0-v1.ckpt", "epoch=1-v1.ckpt"} if i else {"epoch=0.ckpt", "epoch=1.ckpt"}
        assert {Path(f).name for f in mc.best_k_models} == expected

    assert set(visible(tmp_path)) == {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=0-v1.ckpt", "epoch=1-v1.ckpt"}


def test_ckpt_version_after_rerun_same_trainer(checkpoint_cls, tmp_path):
    """Previous checkpoints get the version suffix when the same trainer instance is used."""
    mc = checkpoint_cls(dirpath=tmp_path, save_top_k=-1, monitor="epoch", filename="test")
    mc.STARTING_VERSION = 9
    trainer = Trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                      callbacks=[mc], logger=False, **QUIET)
    trainer.fit(BoringModel())
    trainer.fit_loop.max_epochs = 4
    trainer.fit(BoringModel())

    ckpt_range = range(mc.STARTING_VERSION, trainer.max_epochs + mc.STARTING_VERSION - 1)
    expected = {"test.ckpt", *(f"test-v{i}.ckpt" for i in ckpt_range)}
    assert {Path(f).name for f in mc.best_k_models} == expected
    assert set(visible(tmp_path)) == expected


def test_ckpt_version_counter_disabled_after_rerun_new_trainer(checkpoint_cls, tmp_path):
    """Previous checkpoints get overwritten, no suffixes, with enable_version_counter=False."""
    epochs = 2
    for _ in range(epochs):
        mc = checkpoint_cls(dirpath=tmp_path, save_top_k=-1, save_last=True, monitor="epoch", filename="{epoch}",
                            enable_version_counter=False)
        trainer = Trainer(max_epochs=epochs, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                          callbacks=[mc], logger=False, **QUIET)
        trainer.fit(BoringModel())
        assert {Path(f).name for f in mc.best_k_models} == {"epoch=0.ckpt", "epoch=1.ckpt"}
        assert Path(mc.last_model_path).name == "last.ckpt"

    assert set(visible(tmp_path)) == {"epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"}


def test_check_val_every_n_epochs_top_k_integration(checkpoint_cls, tmp_path):
    mc = checkpoint_cls(dirpath=tmp_path, monitor="epoch", save_top_k=-1, filename="{epoch}")
    trainer = Trainer(default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                      max_epochs=5, check_val_every_n_epoch=2, callbacks=mc, logger=False, **QUIET)
    trainer.fit(BoringModel())
    assert set(visible(tmp_path)) == {"epoch=1.ckpt", "epoch=3.ckpt"}


def test_model_checkpoint_saveload_ckpt(checkpoint_cls, tmp_path):
    def make_assertions(cb_restore, written_ckpt):
        expected_keys = {
            "dirpath": False,
            "best_model_score": False,
            "kth_best_model_path": False,
            "kth_value": False,
            "best_k_models": False,
            "last_model_path": False,
            "best_model_path": True,
        }
        for key, should_match in expected_keys.items():
            if should_match:
                assert getattr(cb_restore, key) == written_ckpt[key]
            else:
                assert getattr(cb_restore, key) != written_ckpt[key]

    class CustomModelCheckpoint(checkpoint_cls):
        def on_load_checkpoint(self, *args, **kwargs):
            assert self.dirpath is not None
            return super().on_load_checkpoint(*args, **kwargs)

    ckpt = {
        "best_model_path": "epoch=10-step=1436.ckpt",
        "best_model_score": torch.tensor(2.246),
        "best_k_models": {"epoch=10-step=1436.ckpt": torch.tensor(2.246)},
        "kth_best_model_path": "epoch=10-step=1436.ckpt",
        "kth_value": torch.tensor(2.246),
        "last_model_path": "last2245.ckpt",
    }

    cb_write = checkpoint_cls(dirpath=tmp_path, save_top_k=-1, save_last=True)
    for key, val in ckpt.items():
        setattr(cb_write, key, val)
    written_ckpt = cb_write.state_dict()
    for state in ckpt:
        assert ckpt[state] == written_ckpt[state]

    cb_restore = checkpoint_cls(dirpath=(tmp_path / "restore"), monitor=None, save_top_k=-1, save_last=True)
    with pytest.warns(UserWarning, match="The dirpath has changed from*"):
        cb_restore.load_state_dict(written_ckpt)
    make_assertions(cb_restore, written_ckpt)

    cb_restore = CustomModelCheckpoint()
    cb_restore.setup(Trainer(default_root_dir=tmp_path, logger=False), BoringModel(), stage="fit")
    with pytest.warns(UserWarning, match="The dirpath has changed from*"):
        cb_restore.load_state_dict(written_ckpt)
    make_assertions(cb_restore, written_ckpt)


def test_resume_training_preserves_old_ckpt_last(checkpoint_cls, tmp_path):
    """The last checkpoint is not deleted from the previous folder when training resumes from the old checkpoint."""
    model = BoringModel()
    trainer_kwargs = {"default_root_dir": tmp_path, "max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 0,
                      "logger": False, **QUIET}
    mc_kwargs = {"filename": "{step}", "monitor": "step", "mode": "max", "save_last": True, "save_top_k": 2,
                 "every_n_train_steps": 1}
    trainer = Trainer(**trainer_kwargs, callbacks=checkpoint_cls(**mc_kwargs))
    trainer.fit(model)
    assert set(visible(tmp_path / "checkpoints")) == {"last.ckpt", "step=2.ckpt", "step=3.ckpt"}

    trainer_kwargs["max_epochs"] += 1
    mc_kwargs["dirpath"] = tmp_path / "new"
    trainer = Trainer(**trainer_kwargs, callbacks=checkpoint_cls(**mc_kwargs))
    trainer.fit(model, ckpt_path=(tmp_path / "checkpoints" / "step=2.ckpt"))
    assert os.path.isfile(tmp_path / "checkpoints" / "last.ckpt")
    assert set(visible(tmp_path / "checkpoints")) == {"last.ckpt", "step=2.ckpt", "step=3.ckpt"}


def test_save_last_saves_correct_last_model_path(checkpoint_cls, tmp_path):
    mc = checkpoint_cls(dirpath=tmp_path, save_last=True)
    mc.CHECKPOINT_NAME_LAST = "{foo}-last"
    trainer = Trainer(callbacks=mc, default_root_dir=tmp_path / "root", logger=False)
    trainer.strategy.connect(BoringModel())

    mc._save_last_checkpoint(trainer, {"foo": torch.tensor(1)})
    expected = "foo=1-last.ckpt"
    assert visible(tmp_path) == [expected]
    full_path = tmp_path / expected
    ckpt = torch.load(full_path, weights_only=True)
    assert ckpt["callbacks"][mc.state_key]["last_model_path"] == str(full_path)


def test_save_last_versioning(checkpoint_cls, tmp_path):
    model = BoringModel()
    for _ in range(2):
        mc = checkpoint_cls(dirpath=tmp_path, save_top_k=0, save_last=True)
        trainer = Trainer(max_epochs=2, callbacks=mc, limit_train_batches=1, limit_val_batches=0, logger=False,
                          **QUIET)
        trainer.fit(model)
    assert {"last.ckpt", "last-v1.ckpt"} == set(visible(tmp_path))
    assert all(not os.path.islink(tmp_path / path) for path in visible(tmp_path))


def test_none_monitor_saves_correct_best_model_path(checkpoint_cls, tmp_path):
    mc = checkpoint_cls(dirpath=tmp_path, monitor=None)
    trainer = Trainer(callbacks=mc, default_root_dir=tmp_path / "root", logger=False)
    trainer.strategy.connect(BoringModel())

    mc._save_none_monitor_checkpoint(trainer, {})
    expected = "epoch=0-step=0.ckpt"
    assert visible(tmp_path) == [expected]
    full_path = str(tmp_path / expected)
    ckpt = torch.load(full_path, weights_only=True)
    assert ckpt["callbacks"][mc.state_key]["best_model_path"] == full_path


def test_last_global_step_saved(checkpoint_cls):
    model_checkpoint = checkpoint_cls(save_top_k=0, save_last=False, monitor="foo")
    trainer = Mock()
    monitor_candidates = {"foo": torch.tensor(123)}
    model_checkpoint._save_topk_checkpoint(trainer, monitor_candidates)
    model_checkpoint._save_last_checkpoint(trainer, monitor_candidates)
    assert model_checkpoint._last_global_step_saved == 0


@pytest.mark.parametrize("every_n_epochs", [0, 5])
def test_save_last_every_n_epochs_interaction(checkpoint_cls, tmp_path, monkeypatch, every_n_epochs):
    """save_last ignores every_n_epochs."""
    saves = count_saves(monkeypatch, checkpoint_cls)
    mc = checkpoint_cls(every_n_epochs=every_n_epochs, save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, callbacks=mc, limit_train_batches=1,
                      limit_val_batches=0, logger=False, **QUIET)
    trainer.fit(BoringModel())
    assert mc.last_model_path
    assert len(saves) == trainer.max_epochs - 1
    assert visible(tmp_path / "checkpoints") == ["last.ckpt"]


@pytest.mark.parametrize("same_resume_folder", [True, False])
def test_resume_and_old_checkpoint_files_remain(checkpoint_cls, same_resume_folder, tmp_path):
    """Checkpoints in the resume folder are not deleted by the save-top-k mechanism."""
    model = BoringModel()
    trainer_kwargs = {"default_root_dir": tmp_path, "limit_train_batches": 10, "limit_val_batches": 0,
                      "logger": False, **QUIET}
    first = tmp_path / "first"
    second = tmp_path / "second"
    new_dirpath = first if same_resume_folder else second

    callback = checkpoint_cls(dirpath=first, monitor="step", mode="max", save_top_k=2, every_n_train_steps=2)
    trainer = Trainer(callbacks=callback, max_steps=5, **trainer_kwargs)
    trainer.fit(model)
    assert set(visible(first)) == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"}

    callback = checkpoint_cls(dirpath=new_dirpath, monitor="step", mode="max", save_top_k=2, every_n_train_steps=2)
    trainer = Trainer(callbacks=callback, max_steps=8, **trainer_kwargs)
    trainer.fit(model, ckpt_path=str(first / "epoch=0-step=4.ckpt"))
    if same_resume_folder:
        assert set(visible(first)) == {"epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt"}
    else:
        assert set(visible(first)) == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"}
        assert set(visible(second)) == {"epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt"}


FIND_LAST_CASES = [
    ("last", ".ckpt", {}, {}),
    ("any", ".any", {}, {}),
    ("last", ".ckpt", {"last"}, {}),
    ("any", ".any", {"last"}, {}),
    ("last", ".ckpt", {"last", "last.ckpt"}, {"last.ckpt"}),
    ("other", ".pt", {"last", "last.pt", "other.pt"}, {"other.pt"}),
    ("last", ".ckpt", {"log.txt", "last-v0.ckpt", "last-v1.ckpt"}, {"last-v0.ckpt", "last-v1.ckpt"}),
    ("other", ".pt", {"log.txt", "last-v0.ckpt", "other-v0.pt", "other-v1.pt"}, {"other-v0.pt", "other-v1.pt"}),
]


@pytest.mark.parametrize("checkpoint_cls", both())
@pytest.mark.parametrize(("name", "extension", "folder_contents", "expected"), FIND_LAST_CASES[-1:])
def test_find_last_checkpoints_other_extension(checkpoint_cls, name, extension, folder_contents, expected, tmp_path):
    """The last upstream case on its own: a `.pt` callback's answer, and `last-v0.ckpt` (not of its extension) left alone."""
    test_find_last_checkpoints(checkpoint_cls, name, extension, folder_contents, expected, tmp_path)


@pytest.mark.parametrize(("name", "extension", "folder_contents", "expected"), FIND_LAST_CASES[:-1])
def test_find_last_checkpoints(checkpoint_cls, name, extension, folder_contents, expected, tmp_path):
    """Lightning's contract: every `last*` file of the extension. Ours by design: only the newest
    checkpoint that verifies, and an empty touched file is not a checkpoint (so: none here)."""
    for file in folder_contents:
        (tmp_path / file).touch()

    trainer = Trainer()
    callback = checkpoint_cls(dirpath=tmp_path)
    callback.CHECKPOINT_NAME_LAST = name
    callback.FILE_EXTENSION = extension
    files = callback._find_last_checkpoints(trainer)
    if checkpoint_cls is LightningModelCheckpoint:
        assert files == {str(tmp_path / p) for p in expected}
    else:
        assert files == set()
        # what is not a checkpoint of the callback's extension is left where it was
        assert {f for f in folder_contents if not f.endswith(extension)} <= set(visible(tmp_path))


def test_find_last_checkpoints_of_real_checkpoints(checkpoint_cls, tmp_path):
    """With real files: Lightning answers `last.ckpt` whatever it holds; ours the newest checkpoint that
    verifies, past a torn `last.ckpt` (our documented variant)."""
    mc = checkpoint_cls(dirpath=tmp_path, save_top_k=-1, save_last=True)
    trainer = Trainer(max_epochs=2, callbacks=mc, limit_train_batches=2, limit_val_batches=0, logger=False, **QUIET)
    trainer.fit(BoringModel())
    assert set(visible(tmp_path)) == {"epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"}

    found = checkpoint_cls(dirpath=tmp_path, save_last=True)._find_last_checkpoints(Trainer())
    if checkpoint_cls is LightningModelCheckpoint:
        assert found == {str(tmp_path / "last.ckpt")}
    else:
        assert len(found) == 1 and Path(found.pop()).name in {"last.ckpt", "epoch=1-step=4.ckpt"}

    last = tmp_path / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # torn in place
    found = checkpoint_cls(dirpath=tmp_path, save_last=True)._find_last_checkpoints(Trainer())
    if checkpoint_cls is LightningModelCheckpoint:
        assert found == {str(tmp_path / "last.ckpt")}
    else:
        assert found == {str(tmp_path / "epoch=1-step=4.ckpt")}


def test_load_with_inf_data_loader(checkpoint_cls, tmp_path):
    """Loading from a checkpoint with a dataloader that has no length."""
    dataset = RandomIterableDataset(size=32, count=10)

    class ModelWithIterableDataset(BoringModel):
        def train_dataloader(self):
            return DataLoader(dataset)

        def val_dataloader(self):
            return DataLoader(dataset)

    model = ModelWithIterableDataset()
    with pytest.raises(TypeError):
        len(model.train_dataloader())

    trainer_kwargs = {"default_root_dir": tmp_path, "max_epochs": 2, "limit_train_batches": 2,
                      "limit_val_batches": None, "check_val_every_n_epoch": 1, "logger": False, **QUIET}
    mc_kwargs = {"save_last": True, "every_n_train_steps": 1}
    trainer = Trainer(**trainer_kwargs, callbacks=checkpoint_cls(**mc_kwargs))
    trainer.fit(model)

    checkpoint_path = tmp_path / "checkpoints" / "epoch=1-step=4.ckpt"
    assert checkpoint_path.name in visible(tmp_path / "checkpoints")

    trainer_kwargs["max_epochs"] = 4
    trainer = Trainer(**trainer_kwargs, callbacks=checkpoint_cls(**mc_kwargs))
    trainer.fit(model, ckpt_path=checkpoint_path)
    assert trainer.global_step == 8


def test_save_last_without_save_on_train_epoch_and_without_val(checkpoint_cls, tmp_path):
    """save_last=True works with save_on_train_epoch_end=False in a model without validation."""
    model = BoringModel()
    model.validation_step = None
    model.val_dataloader = None
    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=False)
    trainer = Trainer(max_epochs=2, callbacks=[checkpoint_callback], logger=False, limit_train_batches=2,
                      default_root_dir=tmp_path / "root", **QUIET)
    trainer.fit(model)
    assert (tmp_path / "last.ckpt").exists()


def test_save_last_only_when_checkpoint_saved(checkpoint_cls, tmp_path):
    """save_last only creates last.ckpt when another checkpoint is actually saved."""

    class SelectiveModel(BoringModel):
        def __init__(self):
            super().__init__()
            self.validation_step_outputs = []

        def validation_step(self, batch, batch_idx):
            outputs = super().validation_step(batch, batch_idx)
            epoch = self.trainer.current_epoch
            loss = torch.tensor(1.0 - epoch * 0.1) if epoch % 2 == 0 else torch.tensor(1.0 + epoch * 0.1)
            outputs["val_loss"] = loss
            self.validation_step_outputs.append(outputs)
            return outputs

        def on_validation_epoch_end(self):
            if self.validation_step_outputs:
                avg_loss = torch.stack([x["val_loss"] for x in self.validation_step_outputs]).mean()
                self.log("val_loss", avg_loss)
                self.validation_step_outputs.clear()

    checkpoint_callback = checkpoint_cls(dirpath=tmp_path, filename="best-{epoch}-{val_loss:.2f}", monitor="val_loss",
                                         save_last=True, save_top_k=1, mode="min", every_n_epochs=1,
                                         save_on_train_epoch_end=False)
    trainer = Trainer(max_epochs=4, callbacks=[checkpoint_callback], logger=False, limit_train_batches=2,
                      limit_val_batches=2, default_root_dir=tmp_path / "root", **QUIET)
    trainer.fit(SelectiveModel())

    checkpoint_names = [f.name for f in tmp_path.glob("*.ckpt") if not f.name.startswith(".")]
    assert "last.ckpt" in checkpoint_names
    assert len(checkpoint_names) == 2, checkpoint_names


def test_model_checkpoint_format_checkpoint_name(checkpoint_cls, tmp_path):
    model_checkpoint = checkpoint_cls(dirpath=tmp_path)
    assert model_checkpoint._format_checkpoint_name("", {"epoch": 3, "step": 2}) == "epoch=3-step=2"
    assert model_checkpoint._format_checkpoint_name(None, {"epoch": 3, "step": 2}, prefix="test") == "test-epoch=3-step=2"
    assert model_checkpoint._format_checkpoint_name("ckpt", {}, prefix="test") == "test-ckpt"
    assert model_checkpoint._format_checkpoint_name("{epoch:03d}-{acc}", {"epoch": 3, "acc": 0.03}) == "epoch=003-acc=0.03"
    ckpt_name = model_checkpoint._format_checkpoint_name("{epoch:03d}-{epoch_test:03d}", {"epoch": 3, "epoch_test": 3})
    assert ckpt_name == "epoch=003-epoch_test=003"
    model_checkpoint.CHECKPOINT_JOIN_CHAR = "@"
    ckpt_name = model_checkpoint._format_checkpoint_name("{epoch},{acc:.5f}", {"epoch": 3, "acc": 0.03}, prefix="test")
    assert ckpt_name == "test@epoch=3,acc=0.03000"
    model_checkpoint = checkpoint_cls(dirpath=tmp_path)
    model_checkpoint.CHECKPOINT_EQUALS_CHAR = ":"
    assert model_checkpoint._format_checkpoint_name("{epoch:03d}-{acc}", {"epoch": 3, "acc": 0.03}) == "epoch:003-acc:0.03"

    ckpt_name = checkpoint_cls(monitor="early_stop_on", dirpath=None).format_checkpoint_name({"epoch": 3, "step": 2})
    assert ckpt_name == "epoch=3-step=2.ckpt"
    ckpt_name = checkpoint_cls(monitor="early_stop_on", dirpath="").format_checkpoint_name({"epoch": 5, "step": 4})
    assert ckpt_name == "epoch=5-step=4.ckpt"
    ckpt_name = checkpoint_cls(monitor="early_stop_on", dirpath=".").format_checkpoint_name({"epoch": 3, "step": 4})
    assert ckpt_name == str(Path(".").resolve() / "epoch=3-step=4.ckpt")
    ckpt = checkpoint_cls(monitor="early_stop_on", dirpath=tmp_path, filename="name")
    assert ckpt.format_checkpoint_name({}, ver=3) == str(tmp_path / "name-v3.ckpt")
    assert ckpt.format_checkpoint_name({}, prefix="test") == str(tmp_path / "test-name.ckpt")
    ckpt = checkpoint_cls(monitor="early_stop_on", dirpath=None, filename="{epoch}_{val/loss:.5f}")
    assert ckpt.format_checkpoint_name({"epoch": 4, "val/loss": 0.03}) == "epoch=4_val/loss=0.03000.ckpt"
    ckpt_name = model_checkpoint._format_checkpoint_name(
        "epoch={epoch:03d}-val_acc={val/acc}", {"epoch": 3, "val/acc": 0.03}, auto_insert_metric_name=False
    )
    assert ckpt_name == "epoch=003-val_acc=0.03"


def test_model_checkpoint_link_checkpoint_relative_path(checkpoint_cls, tmp_path, monkeypatch):
    trainer = Mock()
    monkeypatch.chdir(tmp_path)
    folder = Path("x/z/z")
    folder.mkdir(parents=True)
    file = folder / "file"
    file.touch()
    link = folder / "link"
    checkpoint_cls._link_checkpoint(trainer, filepath=str(file.absolute()), linkpath=str(link.absolute()))
    assert os.path.islink(link)
    assert Path(os.readlink(link)) == file.relative_to(folder)
    assert not os.path.isabs(os.readlink(link))


def test_model_checkpoint_save_last_as_link_not_local(checkpoint_cls):
    callback = checkpoint_cls(dirpath="memory://not-a-filesystem-path", save_last="link")
    with pytest.raises(ValueError, match="save_last='link'.* is only supported for local file paths"):
        callback.setup(trainer=Trainer(logger=False), pl_module=BoringModel(), stage="fit")


def test_expand_home(checkpoint_cls):
    home_root = Path.home()
    assert checkpoint_cls(dirpath="~/checkpoints").dirpath == str(home_root / "checkpoints")
    assert checkpoint_cls(dirpath=Path("~/checkpoints")).dirpath == str(home_root / "checkpoints")
    assert checkpoint_cls(dirpath="./~/checkpoints").dirpath == str(Path.cwd() / "~" / "checkpoints")


def test_ckpt_metric_names(checkpoint_cls, tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, gradient_clip_val=1.0, overfit_batches=0.20,
                      limit_train_batches=0.01, limit_val_batches=0.01, logger=False,
                      callbacks=[checkpoint_cls(monitor="early_stop_on", dirpath=tmp_path, filename="{val_loss:.2f}")],
                      **QUIET)
    trainer.fit(LogInTwoMethods())
    ckpts = [x for x in visible(tmp_path) if "val_loss" in x]
    assert len(ckpts) == 1
    val = re.sub("[^0-9.]", "", ckpts[0])
    assert len(val) > 3


def test_configure_model_checkpoint(checkpoint_cls, tmp_path):
    """All valid and invalid ways a checkpoint callback can be passed to the Trainer."""
    kwargs = {"default_root_dir": tmp_path, "logger": False}
    callback1 = checkpoint_cls(monitor="foo")
    callback2 = checkpoint_cls(monitor="bar")

    trainer = Trainer(enable_checkpointing=True, callbacks=[callback1], **kwargs)
    assert [c for c in trainer.callbacks if isinstance(c, LightningModelCheckpoint)] == [callback1]
    assert trainer.checkpoint_callback == callback1

    trainer = Trainer(callbacks=[callback1, callback2], **kwargs)
    assert trainer.checkpoint_callback == callback1
    assert trainer.checkpoint_callbacks == [callback1, callback2]

    with pytest.raises(MisconfigurationException, match="`enable_checkpointing=False` but found `ModelCheckpoint`"):
        Trainer(enable_checkpointing=False, callbacks=[callback1], **kwargs)


def test_val_check_interval_checkpoint_files(checkpoint_cls, tmp_path):
    """Checkpoint names when validating/checkpointing several times an epoch."""
    model_checkpoint = checkpoint_cls(dirpath=tmp_path, save_top_k=-1, monitor="val_acc", mode="max")
    trainer = Trainer(default_root_dir=tmp_path, val_check_interval=0.2, max_epochs=1, limit_train_batches=10,
                      limit_val_batches=1, callbacks=[model_checkpoint], logger=False, **QUIET)
    trainer.fit(LogInTwoMethods())
    assert set(visible(tmp_path)) == {f"epoch=0-step={s}.ckpt" for s in [2, 4, 6, 8, 10]}


def test_train_epoch_end_ckpt_with_no_validation(checkpoint_cls):
    trainer = Trainer(val_check_interval=0.5, logger=False, callbacks=[checkpoint_cls()])
    trainer.fit_loop.epoch_loop.val_loop._max_batches = [0]
    assert trainer.checkpoint_callback._should_save_on_train_epoch_end(trainer)
    trainer.fit_loop.epoch_loop.val_loop._max_batches = [1]
    assert not trainer.checkpoint_callback._should_save_on_train_epoch_end(trainer)
    trainer.val_check_interval = 0.8
    assert not trainer.checkpoint_callback._should_save_on_train_epoch_end(trainer)


def test_hparams_type(checkpoint_cls, tmp_path):
    class TestModel(BoringModel):
        def __init__(self, hparams):
            super().__init__()
            self.save_hyperparameters(hparams)

    model_checkpoint = checkpoint_cls(dirpath=tmp_path, save_top_k=1)
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=1,
                      callbacks=[model_checkpoint], logger=False, **QUIET)
    model = TestModel(Namespace(test_hp_0=1, test_hp_1=2))
    trainer.fit(model)
    ckpt = trainer._checkpoint_connector.dump_checkpoint()
    assert type(ckpt[model.CHECKPOINT_HYPER_PARAMS_KEY]) is dict
    saved = torch.load(model_checkpoint.best_model_path, weights_only=False)
    assert saved[model.CHECKPOINT_HYPER_PARAMS_KEY] == {"test_hp_0": 1, "test_hp_1": 2}


def test_checkpoint_repeated_strategy_extended(checkpoint_cls, tmp_path):
    """fit/validate/test called several times, with the same callback across trainers, without changing the step."""

    class ExtendedBoringModel(BoringModel):
        def validation_step(self, batch, batch_idx):
            loss = self.step(batch)
            self.log("val_loss", loss)
            return {"val_loss": loss}

    def assert_trainer_init(trainer):
        assert trainer.global_step == 0
        assert trainer.current_epoch == 0

    def get_last_checkpoint(ckpt_dir):
        return str(ckpt_dir / sorted(visible(ckpt_dir))[-1])

    def assert_checkpoint_content(ckpt_dir):
        chk = pl_load(get_last_checkpoint(ckpt_dir))
        assert chk["epoch"] == epochs - 1
        assert chk["global_step"] == 4

    def assert_checkpoint_log_dir(idx):
        lightning_logs = tmp_path / "lightning_logs"
        assert [d.name for d in sorted(lightning_logs.iterdir())] == [f"version_{i}" for i in range(idx + 1)]
        assert len(visible(ckpt_dir)) == epochs, visible(ckpt_dir)

    ckpt_dir = tmp_path / "checkpoints"
    checkpoint_cb = checkpoint_cls(dirpath=ckpt_dir, save_top_k=-1)
    epochs = 2
    limit_train_batches = 2
    trainer_config = {
        "default_root_dir": tmp_path,
        "max_epochs": epochs,
        "limit_train_batches": limit_train_batches,
        "limit_val_batches": 3,
        "limit_test_batches": 4,
        "callbacks": [checkpoint_cb],
        "logger": CSVLogger(tmp_path),
        **QUIET,
    }
    trainer = Trainer(**trainer_config)
    assert_trainer_init(trainer)

    model = ExtendedBoringModel()
    trainer.fit(model)
    assert trainer.global_step == epochs * limit_train_batches
    assert trainer.current_epoch == epochs
    assert_checkpoint_log_dir(0)
    assert_checkpoint_content(ckpt_dir)

    trainer.validate(model, verbose=False)
    assert trainer.current_epoch == epochs
    trainer.test(model, verbose=False)
    assert trainer.current_epoch == epochs

    for idx in range(1, 3):
        chk = get_last_checkpoint(ckpt_dir)
        assert_checkpoint_content(ckpt_dir)

        trainer_config["logger"] = CSVLogger(tmp_path)
        trainer = Trainer(**trainer_config)
        assert_trainer_init(trainer)
        model = ExtendedBoringModel()
        trainer.test(model, verbose=False)
        assert_trainer_init(trainer)

        trainer.fit(model, ckpt_path=chk)
        assert trainer.global_step == epochs * limit_train_batches
        assert trainer.current_epoch == epochs
        assert trainer.fit_loop.epoch_progress.current.processed == epochs

        trainer.validate(model, verbose=False)
        assert trainer.global_step == epochs * limit_train_batches
        assert trainer.current_epoch == epochs

        trainer.fit(model)
        assert trainer.global_step == epochs * limit_train_batches
        assert trainer.current_epoch == epochs
        assert trainer.fit_loop.epoch_progress.current.processed == epochs
        assert_checkpoint_log_dir(idx)


# --- test_checkpoint_callback_frequency.py -------------------------------------------------------


@pytest.mark.parametrize(("epochs", "val_check_interval", "expected"), [(1, 1.0, 1), (2, 1.0, 2), (1, 0.25, 4),
                                                                        (2, 0.3, 6)])
def test_default_checkpoint_freq(checkpoint_cls, tmp_path, monkeypatch, epochs, val_check_interval, expected):
    """Upstream counts `torch.save` calls of the Trainer's default callback (64 batches an epoch); here
    `_save_checkpoint` calls of `checkpoint_cls()` with 20 batches an epoch (the same val checks)."""
    saves = count_saves(monkeypatch, checkpoint_cls)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=epochs, val_check_interval=val_check_interval,
                      limit_train_batches=20, limit_val_batches=1, logger=False, callbacks=[checkpoint_cls()], **QUIET)
    trainer.fit(BoringModel())
    assert len(saves) == expected
    assert len(visible(tmp_path / "checkpoints")) == 1


@pytest.mark.parametrize(("k", "epochs", "val_check_interval", "expected"), [(1, 1, 1.0, 1), (2, 2, 1.0, 2),
                                                                             (2, 1, 0.25, 4), (2, 2, 0.3, 6)])
@pytest.mark.parametrize("save_last", [False, True, "link"])
def test_top_k(checkpoint_cls, tmp_path, monkeypatch, k, epochs, val_check_interval, expected, save_last):
    class TestModel(BoringModel):
        def __init__(self):
            super().__init__()
            self.last_coeff = 10.0

        def training_step(self, batch, batch_idx):
            loss = self.step(torch.ones(32, device=self.device))
            loss = loss / (loss + 0.0000001)
            loss += self.last_coeff
            self.log("my_loss", loss)
            self.last_coeff *= 0.999
            return loss

    saves = count_saves(monkeypatch, checkpoint_cls)
    trainer = Trainer(
        callbacks=[checkpoint_cls(dirpath=tmp_path, monitor="my_loss", save_top_k=k, save_last=save_last)],
        default_root_dir=tmp_path, max_epochs=epochs, val_check_interval=val_check_interval,
        limit_train_batches=20, limit_val_batches=1, logger=False, **QUIET,
    )
    trainer.fit(TestModel())

    # save_last=True: last is saved at every save (double the saves); "link" links instead of saving
    expected = expected * 2 if save_last is True else expected
    assert len(saves) == expected
    assert len([f for f in visible(tmp_path) if f != "last.ckpt"]) == min(k, expected)


# --- test_trainer_checkpoint.py ------------------------------------------------------------------


def test_finetuning_with_ckpt_path(checkpoint_cls, tmp_path):
    """The callback points to the right best_model_path when resumed runs go on from the best one."""
    checkpoint_callback = checkpoint_cls(monitor="val_loss", dirpath=tmp_path, filename="{epoch:02d}", save_top_k=-1)

    class ExtendedBoringModel(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.001)
            lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
            return [optimizer], [lr_scheduler]

        def validation_step(self, batch, batch_idx):
            loss = self.step(batch)
            self.log("val_loss", loss, on_epoch=True, prog_bar=True)

    model = ExtendedBoringModel()
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=2,
                      limit_test_batches=2, callbacks=[checkpoint_callback], logger=False, **QUIET)
    trainer.fit(model)
    assert visible(tmp_path) == ["epoch=00.ckpt"]

    best_model_paths = [checkpoint_callback.best_model_path]
    for idx in range(3, 6):
        # upstream: the Trainer's default callback, whose directory the default logger decides
        trainer = Trainer(default_root_dir=tmp_path, max_epochs=idx, limit_train_batches=2, limit_val_batches=2,
                          limit_test_batches=2, callbacks=[checkpoint_cls()], **QUIET)
        trainer.fit(model, ckpt_path=best_model_paths[-1])
        trainer.test(verbose=False)
        best_model_paths.append(trainer.checkpoint_callback.best_model_path)

    for idx, best_model_path in enumerate(best_model_paths):
        if idx == 0:
            assert best_model_path.endswith(f"epoch=0{idx}.ckpt")
        else:
            assert f"epoch={idx + 1}" in best_model_path
