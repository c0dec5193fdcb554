import os
import subprocess

import pytest
import torch

from trainer_ckpt import storage
from trainer_ckpt.storage import StateFile


@pytest.mark.parametrize(
    "kind, e, b, rank, name",
    [
        ("model_state", 3, 0, None, "model_state_e3_b0.th"),
        ("training_state", 0, 125, None, "training_state_e0_b125.th"),
        ("model_state", 2, 10, 1, "model_state_e2_b10_w1.th"),
    ],
)
def test_names_round_trip(kind, e, b, rank, name):
    assert storage.file_name(kind, e, b, rank) == name
    assert storage.parse_name(name) == StateFile(kind, e, b, rank)


@pytest.mark.parametrize(
    "name",
    [
        "best.th",
        "model_state_epoch_3.th",  # AllenNLP 2.4's layout
        "model_state_e1_b0.th.bak",
        "my_model_state_e1_b0.th",
        ".model_state_e1_b0.th.tmp-123-abcd",
        "model_state_e1_b0",
        "/run/model_state_e1_b0.th",  # a path, not a basename
    ],
)
def test_only_exact_basenames_parse(name):
    assert storage.parse_name(name) is None


def test_atomic_save_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "model_state_e1_b0.th")
    storage.atomic_save({"w": torch.ones(4)}, path)
    with pytest.raises(Exception):
        storage.atomic_save({"w": lambda: None}, path)  # unpicklable: fails half-way
    assert os.listdir(tmp_path) == ["model_state_e1_b0.th"]
    torch.testing.assert_close(storage.load(path)["w"], torch.ones(4))


def test_atomic_save_stamps_the_save_time(tmp_path):
    path = str(tmp_path / "training_state_e1_b0.th")
    storage.atomic_save({}, path, mtime=1234.5)
    assert os.stat(path).st_mtime == 1234.5


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_listing(tmp_path):
    d = str(tmp_path)
    for name in [
        "model_state_e1_b0.th", "training_state_e1_b0.th",  # complete
        "model_state_e1_b5.th",  # model only: killed before the training state was renamed
        "training_state_e0_b5.th",  # training only: killed while deleting
        "model_state_e2_b0_w0.th", "training_state_e2_b0_w0.th",  # sharded: not ours unsharded
        "best.th",
        f".training_state_e1_b5.th.tmp-{dead_pid()}-00ff",
        f".training_state_e1_b5.th.tmp-{os.getppid()}-00ff",  # its writer is alive
    ]:
        storage.atomic_save({}, os.path.join(d, name), mtime=50.0)
    got = storage.list_checkpoints(d, None)
    assert got.complete == [(1, 0)]
    assert got.incomplete == [(0, 5), (1, 5)]
    assert got.times == {(1, 0): 50.0}
    assert [os.path.basename(p).split("-")[0] for p in got.stale_temps] == [".training_state_e1_b5.th.tmp"]
    assert f"-{os.getppid()}-" not in got.stale_temps[0]

    sharded = storage.list_checkpoints(d, range(2))
    assert sharded.complete == [] and sharded.incomplete == [(2, 0)]
    assert storage.list_checkpoints(d, range(1)).complete == [(2, 0)]
    assert storage.list_checkpoints(str(tmp_path / "missing"), None).complete == []
