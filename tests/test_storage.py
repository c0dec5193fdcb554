import json
import os
import subprocess
import zlib

import pytest
import torch

from tests.conftest import FakeTrainer, listing, names
from trainer_ckpt.stores import CheckpointDir, StateFile
from trainer_ckpt import stores
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable

LAYOUT = CheckpointDir("")


@pytest.mark.parametrize(
    "kind, progress, rank, name",
    [
        ("model_state", (3, 0), None, "model_state_e3_b0.th"),
        ("training_state", (0, 125), None, "training_state_e0_b125.th"),
        ("model_state", (2, 10), 1, "model_state_e2_b10_w1.th"),
        ("checkpoint", (2, 10), None, "checkpoint_e2_b10.json"),
    ],
)
def test_names_round_trip(kind, progress, rank, name):
    assert LAYOUT.name(kind, progress, rank) == name
    assert LAYOUT.parse(name) == StateFile(kind, *progress, rank)
    prefixed = CheckpointDir("", "best_")
    assert prefixed.name(kind, progress, rank) == "best_" + name
    assert prefixed.parse("best_" + name) == StateFile(kind, *progress, rank)
    assert prefixed.parse(name) is None and LAYOUT.parse("best_" + name) is None


@pytest.mark.parametrize(
    "name",
    [
        "best.th",
        "model_state_epoch_3.th",  # AllenNLP 2.4's layout
        "model_state_e1_b0.th.bak",
        "my_model_state_e1_b0.th",
        ".model_state_e1_b0.th.tmp-123-abcd",
        "model_state_e1_b0",
        "model_state_e1_b0.json",
        "checkpoint_e1_b0.th",
        "/run/model_state_e1_b0.th",  # a path, not a basename
    ],
)
def test_only_exact_basenames_parse(name):
    assert LAYOUT.parse(name) is None


def test_atomic_save_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "model_state_e1_b0.th")
    durable.atomic_save({"w": torch.ones(4)}, path)
    with pytest.raises(Exception):
        durable.atomic_save({"w": lambda: None}, path)  # unpicklable: fails half-way
    assert os.listdir(tmp_path) == ["model_state_e1_b0.th"]
    torch.testing.assert_close(loading.load(path)["w"], torch.ones(4))


def test_atomic_save_stamps_the_save_time(tmp_path):
    path = str(tmp_path / "training_state_e1_b0.th")
    durable.atomic_save({}, path, mtime=1234.5)
    assert os.stat(path).st_mtime == 1234.5


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_listing(tmp_path):
    d = str(tmp_path)
    for name in [
        "model_state_e1_b0.th", "training_state_e1_b0.th",  # complete, AllenNLP-style (no record)
        "model_state_e1_b5.th",  # model only: killed before the training state was renamed
        "training_state_e0_b5.th",  # training only: killed while deleting
        "checkpoint_e0_b3.json",  # a record whose files are gone
        "model_state_e2_b0_w0.th", "training_state_e2_b0_w0.th",  # sharded: not ours unsharded
        "best.th",
        f".training_state_e1_b5.th.tmp-{dead_pid()}-00ff",
        f".training_state_e1_b5.th.tmp-{os.getppid()}-00ff",  # its writer is alive
    ]:
        durable.atomic_save({}, os.path.join(d, name), mtime=50.0)
    layout = CheckpointDir(d)
    files = layout.write_states((3, 0), None, {"w": torch.ones(2)}, {}, mtime=70.0)
    layout.write_record((3, 0), None, stores.record((3, 0), 70.0, {"acc": 0.5, "note": "x"}, 60, True))
    got = layout.list(None)
    assert [(f.progress, f.time, f.record.get("metrics")) for f in got.complete] == [
        ((1, 0), 50.0, None),
        ((3, 0), 70.0, {"acc": 0.5}),
    ]
    assert got.complete[1].record["total_batches_completed"] == 60 and got.complete[1].record["is_best_so_far"]
    assert got.complete[1].size_bytes == sum(
        os.path.getsize(os.path.join(d, n)) for n in ("model_state_e3_b0.th", "training_state_e3_b0.th")
    )
    assert json.loads((tmp_path / "checkpoint_e3_b0.json").read_text())["time"] == 70.0
    assert got.incomplete == [(0, 5), (1, 5)] and got.orphan_records == [(0, 3)]
    for kind in ("model_state", "training_state"):
        data = (tmp_path / files[kind]["name"]).read_bytes()
        assert files[kind]["size"] == len(data) and files[kind]["crc32"] == zlib.crc32(data)
    assert [os.path.basename(p).split("-")[0] for p in got.stale_temps] == [".training_state_e1_b5.th.tmp"]
    assert f"-{os.getppid()}-" not in got.stale_temps[0]

    assert layout.list(range(2)).incomplete == [(2, 0)]
    assert [f.progress for f in layout.list(range(1)).complete] == [(2, 0)]
    assert CheckpointDir(str(tmp_path / "missing")).list(None).complete == []

    layout.remove((3, 0), None)
    assert not [n for n in os.listdir(d) if "e3_b0" in n]


class _Allowed:
    pass


class _AlsoAllowed:
    pass


def test_allowing_takes_back_only_what_it_added():
    """torch's `safe_globals` context manager drops, on exit, types the user had allowed for the process."""
    torch.serialization.add_safe_globals([_Allowed])
    try:
        with loading.allowing([_Allowed, _AlsoAllowed]):
            assert {_Allowed, _AlsoAllowed} <= set(torch.serialization.get_safe_globals())
        assert _Allowed in torch.serialization.get_safe_globals()
        assert _AlsoAllowed not in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()


def test_large_files_of_a_deleted_checkpoint_go_at_once_and_are_unlinked_on_a_thread(tmp_path):
    """ext4 frees a large file's blocks inside unlink: the files are renamed away now, unlinked after."""
    import threading

    from trainer_ckpt import DefaultCheckpointer

    big = lambda epoch: FakeTrainer({"w": torch.full((80 << 18,), float(epoch))},  # 80 MiB
                                    {"epochs_completed": epoch, "batches_in_epoch_completed": 0})
    checkpointer = DefaultCheckpointer(tmp_path, keep_most_recent_by_count=1)
    checkpointer.maybe_save_checkpoint(big(1), 1, 0)
    unlinking = threading.Event()
    release = threading.Event()
    real_remove = os.remove

    def slow_remove(path):  # holds the deleter thread, to see the state in between
        if ".tmp-" in os.path.basename(str(path)) and threading.current_thread().name.startswith("trainer_ckpt-delete"):
            unlinking.set()
            release.wait(10)
        real_remove(path)

    os.remove = slow_remove
    try:
        checkpointer.maybe_save_checkpoint(big(2), 2, 0)
        assert unlinking.wait(10)
        visible = sorted(n for n in os.listdir(tmp_path) if not n.startswith("."))
        assert visible == names((2, 0))  # e1_b0 is gone from its names already
        assert any(n.startswith(".model_state_e1_b0.th.tmp-") for n in os.listdir(tmp_path))
        assert checkpointer.load_checkpoint()[1]["epochs_completed"] == 2  # our own pending unlink is not "stale"
    finally:
        release.set()
        os.remove = real_remove
    checkpointer.close()  # waits for the unlinks
    assert listing(tmp_path) == names((2, 0))
