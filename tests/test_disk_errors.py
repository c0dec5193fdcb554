"""
Full disks and I/O errors on a real small filesystem (a 1 MiB tmpfs mounted by the test): a save
that fails removes its own partial files, leaves every earlier checkpoint intact and loadable,
and says what happened.
"""
import logging
import subprocess

import pytest
import torch

from tests.conftest import FakeTrainer, listing, names, saved
from trainer_ckpt import DefaultCheckpointer, KeepAll
from trainer_ckpt.faces.allennlp.checkpointer import CheckpointSaveError

KIB = 1024


@pytest.fixture
def small_fs(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield mount_point
    while subprocess.run(["umount", "-l", str(mount_point)], capture_output=True).returncode == 0:
        pass  # tests may stack a read-only bind mount on top


def state(epoch, model_kib, training_kib=1):
    weight = torch.full((model_kib * KIB // 4,), float(epoch))
    return FakeTrainer(
        {"weight": weight},
        {"epochs_completed": epoch, "batches_in_epoch_completed": 0, "pad": torch.zeros(training_kib * KIB // 4)},
    )


def assert_only_first_checkpoint(directory):
    assert listing(directory) == names((1, 0))  # no temp file, no half of the new checkpoint
    loaded = DefaultCheckpointer(directory, read_only=True).load_checkpoint()
    torch.testing.assert_close(loaded.model_state["weight"], torch.full((25 * KIB,), 1.0))


@pytest.mark.parametrize("model_kib, training_kib", [(2048, 1), (100, 2048)], ids=["in_model_file", "in_training_file"])
def test_disk_full_during_a_save(small_fs, model_kib, training_kib):
    checkpointer = DefaultCheckpointer(small_fs, retention_policy=KeepAll())
    checkpointer.save_checkpoint(state(1, 100))
    # The free-space check expects ~100 KiB, as the last one: this one is far bigger, and hits ENOSPC.
    with pytest.raises(CheckpointSaveError, match=(
        rf"trainer_ckpt checkpointer: could not save checkpoint e2_b0 in {small_fs}, got OSError: "
        r"\[Errno 28\] No space left on device.*Earlier checkpoints are untouched\. Free disk space"
    )):
        checkpointer.save_checkpoint(state(2, model_kib, training_kib))
    assert_only_first_checkpoint(small_fs)


def test_free_space_is_checked_before_writing(small_fs):
    checkpointer = DefaultCheckpointer(small_fs, retention_policy=KeepAll())
    checkpointer.save_checkpoint(state(1, 600))
    with pytest.raises(CheckpointSaveError, match=(
        r"could not save checkpoint e2_b0 in .*, got OSError: \[Errno 28\] not enough free space for "
        r"checkpoint e2_b0: it needs about \d+ bytes \(the size of the last one\), got \d+ bytes free\."
    )):
        checkpointer.save_checkpoint(state(2, 600))
    assert listing(small_fs) == names((1, 0))


def test_warn_lets_training_go_on_and_the_next_save_works(small_fs, caplog):
    checkpointer = DefaultCheckpointer(small_fs, save_completed_epochs=True, keep_most_recent_by_count=1,
                                       on_save_error="warn")
    assert checkpointer.maybe_save_checkpoint(state(1, 100), 1, 0)
    filler = small_fs / "someone_elses_file"
    filler.write_bytes(b"x" * 850 * KIB)
    with caplog.at_level(logging.ERROR):
        assert not checkpointer.maybe_save_checkpoint(state(2, 100), 2, 0)
    assert "could not save checkpoint e2_b0" in caplog.text
    assert saved(small_fs) == [(1, 0)]
    filler.unlink()
    assert checkpointer.maybe_save_checkpoint(state(3, 100), 3, 0)
    assert saved(small_fs) == [(3, 0)]


def test_a_directory_turned_read_only(small_fs):
    checkpointer = DefaultCheckpointer(small_fs, retention_policy=KeepAll())
    checkpointer.save_checkpoint(state(1, 100))
    # A read-only bind mount of the directory over itself: new writes fail with EROFS.
    subprocess.run(["mount", "--bind", str(small_fs), str(small_fs)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(small_fs)], check=True)
    with pytest.raises(CheckpointSaveError, match=r"could not save checkpoint e2_b0 in .*, got OSError: \[Errno 30\] Read-only file system"):
        checkpointer.save_checkpoint(state(2, 100))
    assert_only_first_checkpoint(small_fs)
    with pytest.raises(Exception, match=r"serialization directory .* is not writable, got OSError: \[Errno 30\] Read-only file system.*read_only=True"):
        DefaultCheckpointer(str(small_fs) + "/other")


def test_fvcore_face_full_disk_keeps_the_earlier_checkpoint_and_pointer(small_fs):
    from torch import nn

    from trainer_ckpt.fvcore import Checkpointer

    model = nn.Linear(64, 64, bias=False)  # 16 KiB
    checkpointer = Checkpointer(model, str(small_fs))
    checkpointer.save("model_small")
    model.big = nn.Parameter(torch.zeros(2 * KIB * KIB // 4))  # 2 MiB: cannot fit in 1 MiB
    with pytest.raises(OSError):
        checkpointer.save("model_big")
    assert sorted(p.name for p in small_fs.iterdir()) == [
        ".model_small.pth.json", ".model_small.pth.rng", ".trainer_ckpt.core.lock", "last_checkpoint", "model_small.pth"
    ]  # no temp file left, the pointer still names the good one
    fresh = nn.Linear(64, 64, bias=False)
    Checkpointer(fresh, str(small_fs)).resume_or_load("")
    assert torch.equal(fresh.weight, model.weight)
