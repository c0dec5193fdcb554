"""
The Lightning face in a real `lightning.pytorch.Trainer` (Lightning 2.6.6, BoringModel on the CPU):
the same files as Lightning's own `ModelCheckpoint`, each with a record; `fit(ckpt_path="last")`
falling back past a truncated `last.ckpt` and resuming at the step of the checkpoint it chose;
interop both ways with Lightning's own callback.
"""
import logging
import os

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from trainer_ckpt.io import durable
from trainer_ckpt.lightning import ModelCheckpoint


class StepModel(BoringModel):
    """BoringModel that notes the global step of its first training batch (where a resumed run starts)."""

    def __init__(self):
        super().__init__()
        self.first_step = None

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = self.trainer.global_step
        return super().training_step(batch, batch_idx)


def fit(callback, max_epochs, ckpt_path=None, root=None):
    torch.manual_seed(0)
    model = StepModel()
    trainer = Trainer(max_epochs=max_epochs, callbacks=[callback], default_root_dir=root, limit_train_batches=4,
                      limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def visible(directory):
    return sorted(f for f in os.listdir(directory) if not f.startswith(".") and f != "corrupt")


@pytest.mark.parametrize("kwargs", [
    dict(save_top_k=2, monitor="step", mode="max", save_last=True),
    dict(save_top_k=-1, every_n_epochs=2),
    dict(every_n_train_steps=3, save_top_k=1),
    dict(save_top_k=1, filename="model", save_last=True),
])
def test_the_same_files_as_lightnings_own_each_with_a_record(tmp_path, kwargs):
    theirs, _ = fit(LightningModelCheckpoint(dirpath=tmp_path / "theirs", **kwargs), 4)
    ours, _ = fit(ModelCheckpoint(dirpath=tmp_path / "ours", **kwargs), 4)
    assert visible(tmp_path / "ours") == visible(tmp_path / "theirs")
    mine, peer = ours.checkpoint_callback, theirs.checkpoint_callback
    assert os.path.basename(mine.best_model_path) == os.path.basename(peer.best_model_path)
    assert os.path.basename(mine.last_model_path) == os.path.basename(peer.last_model_path)
    assert sorted(map(os.path.basename, mine.best_k_models)) == sorted(map(os.path.basename, peer.best_k_models))
    for name in visible(tmp_path / "ours"):
        record = durable.read_json(str(tmp_path / "ours" / f".{name}.json"))
        assert record["files"]["checkpoint"]["size"] == os.path.getsize(tmp_path / "ours" / name)
        assert os.path.exists(tmp_path / "ours" / f".{name}.rng")
        loaded = torch.load(tmp_path / "ours" / name, weights_only=True)  # Lightning's own contents, loadable as it loads them
        assert loaded["global_step"] == record["global_step"] and "pytorch-lightning_version" in loaded
    assert not [f for f in os.listdir(tmp_path / "ours") if ".tmp-" in f]


def test_fit_from_last_falls_back_past_a_truncated_last_ckpt_and_resumes_at_its_step(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    fit(ModelCheckpoint(dirpath=directory, save_top_k=-1, save_last=True), 3)
    assert visible(directory) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt"]
    last = directory / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a save torn by a crash (in place: a writer that is not atomic)

    # Lightning's own callback picks the torn last.ckpt and fails on it.
    with pytest.raises(Exception):
        fit(LightningModelCheckpoint(dirpath=tmp_path / "elsewhere"), 5, ckpt_path=str(last))

    with caplog.at_level(logging.WARNING, logger="trainer_ckpt"):
        trainer, model = fit(ModelCheckpoint(dirpath=directory, save_top_k=-1, save_last=True), 5, ckpt_path="last")
    assert os.path.basename(trainer.ckpt_path) == "epoch=2-step=12.ckpt"
    assert model.first_step == 12  # resumed where that checkpoint was saved, not from scratch
    assert trainer.global_step == 20
    assert "last.ckpt" in os.listdir(directory / "corrupt")
    assert any("last.ckpt" in r.getMessage() and "Falling back" in r.getMessage() for r in caplog.records)


def test_a_directory_lightning_wrote_resumes_with_ours_and_ours_with_lightnings(tmp_path):
    theirs = tmp_path / "theirs"
    fit(LightningModelCheckpoint(dirpath=theirs, save_last=True), 2)
    trainer, model = fit(ModelCheckpoint(dirpath=theirs, save_last=True), 3, ckpt_path="last")  # no records: verified by loading
    assert (os.path.basename(trainer.ckpt_path), model.first_step, trainer.global_step) == ("last.ckpt", 8, 12)

    ours = tmp_path / "ours"
    fit(ModelCheckpoint(dirpath=ours, save_last=True), 2)
    trainer, model = fit(LightningModelCheckpoint(dirpath=ours, save_last=True), 3, ckpt_path="last")
    assert (os.path.basename(trainer.ckpt_path), model.first_step, trainer.global_step) == ("last.ckpt", 8, 12)
    # Lightning wrote step 12's files (no records of its own): ours resumes from one of them, at step 12.
    trainer, model = fit(ModelCheckpoint(dirpath=ours, save_last=True), 4, ckpt_path="last")
    assert os.path.basename(trainer.ckpt_path) in ("last.ckpt", "epoch=2-step=12.ckpt") and model.first_step == 12
    assert not os.path.exists(ours / "corrupt")


class RandomModel(StepModel):
    """Dropout in the forward pass and a shuffled loader: every step draws from torch's generator."""

    def __init__(self):
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.layer(self.dropout(x))

    def train_dataloader(self):
        data = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))  # the same data in every process
        return torch.utils.data.DataLoader(list(data), batch_size=4, shuffle=True)


def fit_random(callback, max_epochs, ckpt_path=None):
    torch.manual_seed(0)
    model = RandomModel()
    trainer = Trainer(max_epochs=max_epochs, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("face", ["ours", "lightning"])
def test_a_resumed_run_ends_as_the_uninterrupted_one_with_ours_not_with_lightnings(tmp_path, face):
    """Stopped at an epoch's end and resumed with fit(ckpt_path=...): ours puts every generator back
    (Lightning restores none: the resumed run draws another shuffle and other dropout masks)."""
    cls = ModelCheckpoint if face == "ours" else LightningModelCheckpoint
    straight = fit_random(cls(dirpath=tmp_path / "straight", save_top_k=-1), 4)
    fit_random(cls(dirpath=tmp_path / "stopped", save_top_k=-1, save_last=True), 2)
    resumed = fit_random(cls(dirpath=tmp_path / "stopped", save_top_k=-1, save_last=True), 4,
                         ckpt_path=str(tmp_path / "stopped" / "epoch=1-step=16.ckpt"))
    assert resumed.first_step == 16  # it resumed: a restart from scratch would start at 0
    same = all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert same is (face == "ours")


def test_a_file_lightning_put_over_ours_is_its_file_and_one_changed_in_place_is_corrupt(tmp_path):
    directory = tmp_path / "ckpt"
    fit(ModelCheckpoint(dirpath=directory, save_top_k=0, save_last=True), 2)
    assert visible(directory) == ["last.ckpt"] and (directory / ".last.ckpt.json").exists()
    fit(LightningModelCheckpoint(dirpath=directory, save_top_k=0, save_last=True), 3, ckpt_path="last")  # replaces it
    trainer, model = fit(ModelCheckpoint(dirpath=directory, save_top_k=0, save_last=True), 4, ckpt_path="last")
    assert (os.path.basename(trainer.ckpt_path), model.first_step) == ("last.ckpt", 12)  # Lightning's step-12 file
    assert not (directory / "corrupt").exists()

    with open(directory / "last.ckpt", "r+b") as f:  # ours now (step 16): one byte changed in place
        f.seek(os.path.getsize(directory / "last.ckpt") // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    trainer, model = fit(ModelCheckpoint(dirpath=directory, save_top_k=0, save_last=True), 5, ckpt_path="last")
    assert trainer.ckpt_path is None and model.first_step == 0  # nothing good left: a new run, not a corrupt resume
    assert os.listdir(directory / "corrupt") == ["last.ckpt", ".last.ckpt.json", ".last.ckpt.rng"] or \
        sorted(os.listdir(directory / "corrupt")) == sorted(["last.ckpt", ".last.ckpt.json", ".last.ckpt.rng"])


def test_a_retention_policy_instead_of_save_top_k_judges_only_this_callbacks_top_k_files(tmp_path):
    from trainer_ckpt import KeepMostRecentByCount

    with pytest.raises(ValueError, match=r"give at most one of `save_top_k` and `retention_policy`, got save_top_k=3"):
        ModelCheckpoint(dirpath=tmp_path, save_top_k=3, retention_policy=KeepMostRecentByCount(2))
    with pytest.raises(TypeError, match=r"`retention_policy` must be a RetentionPolicy, got 2\."):
        ModelCheckpoint(dirpath=tmp_path, retention_policy=2)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "pretrained.ckpt").write_bytes(b"not ours")  # another's file: never judged
    trainer, _ = fit(ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True,
                                     retention_policy=KeepMostRecentByCount(2)), 2)
    assert visible(tmp_path / "ckpt") == ["epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt", "last.ckpt", "pretrained.ckpt"]
    callback = trainer.checkpoint_callback
    assert os.path.basename(callback.best_model_path) == "epoch=1-step=8.ckpt"  # no monitor: the newest, as Lightning's


def test_background_saves_write_lightnings_files_and_an_exception_waits_for_them(tmp_path):
    theirs, _ = fit(LightningModelCheckpoint(dirpath=tmp_path / "theirs", save_top_k=2, monitor="step", mode="max",
                                             every_n_train_steps=1, save_last=True), 2)
    ours, _ = fit(ModelCheckpoint(dirpath=tmp_path / "ours", save_top_k=2, monitor="step", mode="max",
                                  every_n_train_steps=1, save_last=True, background=True), 2)
    assert visible(tmp_path / "ours") == visible(tmp_path / "theirs")
    for name in visible(tmp_path / "ours"):
        assert durable.read_json(str(tmp_path / "ours" / f".{name}.json"))["files"]["checkpoint"]["size"] > 0

    class Fails(StepModel):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 5:
                raise RuntimeError("the step fails")
            return super().training_step(batch, batch_idx)

    callback = ModelCheckpoint(dirpath=tmp_path / "failed", every_n_train_steps=1, save_top_k=-1, background=True)
    trainer = Trainer(max_epochs=3, callbacks=[callback], limit_train_batches=4, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="the step fails"):
        trainer.fit(Fails())
    # Every save submitted before the exception is committed: its record is there, no temp file is left.
    assert visible(tmp_path / "failed") == [f"epoch={(s - 1) // 4}-step={s}.ckpt" for s in range(1, 6)]
    assert all((tmp_path / "failed" / f".{name}.json").exists() for name in visible(tmp_path / "failed"))
    assert not [f for f in os.listdir(tmp_path / "failed") if ".tmp-" in f]
    # The directory's writer lock went with the exception (this process lives on, as a notebook's
    # does): another process may take it and resume.
    import subprocess
    import sys

    from trainer_ckpt.core.lock import LOCK_FILE

    take = "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    assert subprocess.run([sys.executable, "-c", take, str(tmp_path / "failed" / LOCK_FILE)]).returncode == 0


@pytest.mark.parametrize("background", [False, True])
def test_what_our_retention_deletes_leaves_lightnings_top_k_too(tmp_path, background):
    from trainer_ckpt import KeepMostRecentByCount

    trainer, _ = fit(ModelCheckpoint(dirpath=tmp_path, monitor="step", mode="min", every_n_train_steps=2,
                                     retention_policy=KeepMostRecentByCount(2), background=background), 2)
    callback = trainer.checkpoint_callback
    assert visible(tmp_path) == ["epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt"]
    assert sorted(map(os.path.basename, callback.best_k_models)) == visible(tmp_path)
    assert os.path.basename(callback.best_model_path) == "epoch=1-step=6.ckpt"  # the lowest step left (mode="min")


def test_the_command_line_reads_lightnings_directories_and_ours(tmp_path, capsys):
    from trainer_ckpt.cli import main

    fit(ModelCheckpoint(dirpath=tmp_path / "ours", save_top_k=2, monitor="step", mode="max", save_last=True), 3)
    fit(LightningModelCheckpoint(dirpath=tmp_path / "theirs", save_top_k=2, monitor="step", mode="max", save_last=True), 3)
    capsys.readouterr()
    for directory, checksum in (("ours", "recorded"), ("theirs", "none")):
        assert main(["ls", str(tmp_path / directory)]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:4]]
        assert [(row[0], row[5]) for row in rows] == [(name, checksum) for name in
                                                      ("epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt")]
        assert main(["verify", str(tmp_path / directory)]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == f"all checkpoints in {tmp_path / directory} are good"
    assert main(["export", str(tmp_path / "ours"), "--to", str(tmp_path / "w.pt")]) == 0
    exported = torch.load(tmp_path / "w.pt", weights_only=True)
    saved = torch.load(tmp_path / "ours" / "last.ckpt", weights_only=True)["state_dict"]
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    # The same training in both: only the callbacks' own paths differ, and that is state, said as such.
    assert main(["diff", str(tmp_path / "ours"), str(tmp_path / "theirs")]) == 1
    changes = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("tensor ", "value "))]
    assert len(changes) == 4 and all(".best_k_models." in line for line in changes), changes


def test_sigkilled_mid_epoch_and_resumed_from_last_ends_bit_identical_with_ours_not_with_lightnings(tmp_path):
    """A real SIGKILL in the second epoch's third batch, then fit(ckpt_path="last") in a new process,
    with a stateful loader (Lightning restores its position): ours ends bit-identical to the
    uninterrupted run (every generator back as at the save); Lightning's own callback does not
    (its resumed run draws other dropout masks)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    def run(directory, mode, face):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "lightning_loop.py"), str(directory), mode, face],
                                capture_output=True, text=True, env=env)
        if mode == "killed":
            assert result.returncode == -9, result.stderr[-2000:]
            return None
        assert result.returncode == 0, result.stderr[-2000:]
        return torch.load(f"{directory}.{mode}.pt", weights_only=True)

    straight = run(tmp_path / "straight", "straight", "ours")
    for face in ("ours", "lightning"):
        run(tmp_path / face, "killed", face)
        assert "epoch=1-step=9.ckpt" in os.listdir(tmp_path / face)
        resumed = run(tmp_path / face, "resumed", face)
        assert resumed["first_step"] == 9  # it resumed at the last save, within the second epoch
        same = all(torch.equal(straight["weights"][k], resumed["weights"][k]) for k in straight["weights"])
        assert same is (face == "ours"), face
