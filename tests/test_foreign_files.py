"""
Nothing a checkpointer did not write is ever deleted: files and objects beside its checkpoints (a
README, a vocabulary, another tool's weights, a nested folder, names shaped like temp files) survive
saves, retention and the clean-up after a crash, locally and in a bucket. Only names of the layout's
own checkpoint and temp files go.
"""
import json
import os
import subprocess

import torch
from ignite.engine import Engine as IgniteEngine

from tests.conftest import trainer_at
from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer
from trainer_ckpt.ignite import Checkpoint, DiskSaver


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def foreign(dead: int):
    """{relative path: bytes} of files that are not a checkpointer's, some shaped like ours."""
    return {
        "README.md": b"# my run",
        "vocab.txt": b"a\nb\n",
        "model_final.bin": b"another tool's weights",
        "data/part-0.bin": b"nested",
        f".README.md.tmp-{dead}-0123abcd": b"a temp-shaped name of a file that is not ours",
        f".notes.tmp-{dead}-0123abcd": b"the same",
        ".vocab.txt.pending": b"a pending-shaped name that is not ours",
    }


def plant(directory, files) -> None:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def assert_intact(directory, files) -> None:
    for name, data in files.items():
        assert (directory / name).read_bytes() == data, name


def test_local_directories_of_every_face_keep_what_is_not_theirs(tmp_path):
    dead = dead_pid()
    files = foreign(dead)
    model = torch.nn.Linear(3, 3)

    fvcore_dir = tmp_path / "fvcore"
    plant(fvcore_dir, {**files, f".model_0000001.pth.tmp-{dead}-0123abcd": b"a save of ours, killed",
                       f".last_checkpoint.tmp-{dead}-0123abcd": b"a pointer update of ours, killed"})
    periodic = PeriodicCheckpointer(Checkpointer(model, str(fvcore_dir)), period=1, max_to_keep=1)
    for iteration in range(4):
        periodic.step(iteration)
    assert sorted(p for p in os.listdir(fvcore_dir) if p.endswith(".pth")) == ["model_0000003.pth"]
    assert not (fvcore_dir / f".model_0000001.pth.tmp-{dead}-0123abcd").exists()  # ours: cleaned up
    assert not (fvcore_dir / f".last_checkpoint.tmp-{dead}-0123abcd").exists()

    ignite_dir = tmp_path / "ignite"
    plant(ignite_dir, {**files, f".model_1.pt.tmp-{dead}-0123abcd": b"a save of ours, killed"})
    handler = Checkpoint({"model": model}, DiskSaver(str(ignite_dir), require_empty=False), n_saved=1)
    engine = IgniteEngine(lambda e, b: None)
    for iteration in (1, 2, 3):
        engine.state.iteration = iteration
        handler(engine)
    assert sorted(p for p in os.listdir(ignite_dir) if p.endswith(".pt")) == ["model_3.pt"]
    assert not (ignite_dir / f".model_1.pt.tmp-{dead}-0123abcd").exists()

    allennlp_dir = tmp_path / "allennlp"
    plant(allennlp_dir, {**files, f".model_state_e1_b0.th.tmp-{dead}-0123abcd": b"a save of ours, killed",
                         f".best.th.tmp-{dead}-0123abcd": b"a best.th link of ours, killed"})
    checkpointer = DefaultCheckpointer(allennlp_dir, keep_most_recent_by_count=1)
    assert checkpointer.load_checkpoint() is None  # what the trainer calls first: the clean-up after a crash
    for epoch in (1, 2, 3):
        checkpointer.save_checkpoint(epoch - 1, trainer_at(epoch, 0), is_best_so_far=True)  # AllenNLP 2.4's call: links best.th
    checkpointer.close()
    assert sorted(p for p in os.listdir(allennlp_dir) if p.endswith(".th")) == ["best.th", "model_state_e3_b0.th", "training_state_e3_b0.th"]
    assert not [p for p in os.listdir(allennlp_dir) if ".tmp-" in p and "0123abcd" not in p]
    assert not (allennlp_dir / f".best.th.tmp-{dead}-0123abcd").exists()
    assert not (allennlp_dir / f".model_state_e1_b0.th.tmp-{dead}-0123abcd").exists()

    for directory in (fvcore_dir, ignite_dir, allennlp_dir):
        assert_intact(directory, files)


def objects(fs, root):
    fs.invalidate_cache()
    return {p[len(root) + 1:] for p in fs.find(root, withdirs=False)}


def test_a_bucket_prefix_keeps_what_is_not_ours_through_saves_retention_and_crash_clean_up(tmp_path, bucket):
    url, options, fs = bucket
    root = f"{url[5:]}/exp1"
    files = foreign(dead_pid())
    for name, data in files.items():
        fs.pipe(f"{root}/{name}", data)
    # What a killed upload of ours left: its marker names the objects it had put.
    fs.pipe(f"{root}/model_0000001.pth", b"half an upload")
    fs.pipe(f"{root}/.model_0000001.pth.json.pending", json.dumps(["model_0000001.pth", ".model_0000001.pth.rng"]).encode())
    # Named like ours, but nothing vouches for it: left alone.
    fs.pipe(f"{root}/model_0000099.pth", b"someone else's")

    model = torch.nn.Linear(3, 3)
    checkpointer = Checkpointer(model, f"{url}/exp1", storage_options=options, staging_dir=str(tmp_path / "staging"))
    periodic = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=1)
    for iteration in range(4):
        periodic.step(iteration)
    checkpointer.engine.close()

    after = objects(fs, root)
    ours = {"model_0000003.pth", ".model_0000003.pth.json", ".model_0000003.pth.rng"}
    assert after - ours == set(files) | {"model_0000099.pth"}, after
    for name, data in files.items():
        assert fs.cat_file(f"{root}/{name}") == data, name
