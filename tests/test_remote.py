"""
Object storage through fsspec, against a real S3-compatible server (moto's standalone server, the
way s3fs tests itself) started on 127.0.0.1: uploads whole with the record last, retention in the
bucket, SIGKILL during uploads, resume from the bucket into a fresh directory.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, trainer_at
from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt import stores
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.stores.mirrored import Mirrored


def objects(fs, url):
    fs.invalidate_cache()
    return sorted(os.path.basename(p) for p in fs.ls(url[len("s3://"):], detail=False))


def upload_epochs(directory, run, options, epochs, **kwargs):
    """Checkpoints at the end of each of `epochs`, kept here and uploaded to `run`."""
    checkpointer = DefaultCheckpointer(directory, upload_to=run, storage_options=options,
                                       **{"keep_most_recent_by_count": None, **kwargs})
    for epoch in epochs:
        checkpointer.maybe_save_checkpoint(trainer_at(epoch, 0), epoch, 0)
    checkpointer.close()


@pytest.mark.parametrize("background", [False, True])
def test_checkpoints_go_to_the_bucket_retention_deletes_there_and_a_fresh_directory_resumes(tmp_path, bucket, background):
    url, options, fs = bucket
    run = f"{url}/run"
    upload_epochs(tmp_path / "here", run, options, (1, 2, 3), keep_most_recent_by_count=2, background=background)
    assert objects(fs, run) == ["checkpoint_e2_b0.json", "checkpoint_e3_b0.json", "model_state_e2_b0.th",
                                "model_state_e3_b0.th", "training_state_e2_b0.th", "training_state_e3_b0.th"]
    record = json.loads(fs.cat_file(f"{run[5:]}/checkpoint_e3_b0.json"))
    assert record["files"]["model_state"]["size"] == fs.size(f"{run[5:]}/model_state_e3_b0.th")
    # A new machine: an empty serialization directory resumes from the bucket.
    fresh = DefaultCheckpointer(tmp_path / "elsewhere", upload_to=run, storage_options=options)
    model_state, training_state = fresh.load_checkpoint()
    torch.testing.assert_close(model_state, trainer_at(3, 0)._model_state, rtol=0, atol=0)
    assert (training_state["epochs_completed"], training_state["batches_in_epoch_completed"]) == (3, 0)
    fresh.close()


def test_a_bad_newest_object_falls_back_to_the_previous_checkpoint(tmp_path, bucket):
    url, options, fs = bucket
    run = f"{url}/run"
    upload_epochs(tmp_path / "here", run, options, (1, 2))
    fs.pipe(f"{run[5:]}/model_state_e2_b0.th", b"garbage")  # the object changed after its record was written
    model_state, _ = DefaultCheckpointer(tmp_path / "elsewhere", upload_to=run, storage_options=options).load_checkpoint()
    torch.testing.assert_close(model_state, trainer_at(1, 0)._model_state, rtol=0, atol=0)


def test_upload_to_must_be_a_url(tmp_path):
    from allennlp.common.checks import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"`upload_to` must be an fsspec URL, got '/data/run'\. Write e\.g\."):
        DefaultCheckpointer(tmp_path, upload_to="/data/run")
    with pytest.raises(ConfigurationError, match="`storage_options` is for `upload_to`"):
        DefaultCheckpointer(tmp_path, storage_options={"anon": True})


WRITER = """
import json, os, signal, sys, torch
from trainer_ckpt import stores
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt import stores
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.stores.mirrored import Mirrored
from trainer_ckpt.retention_policies import KeepMostRecentByCount
local, url, options, die_before = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
mirror = Mirrored(stores.Pairs(local), url, options)
engine = Engine(mirror)
engine.clean_up()
step = max([e.key[1] for e in engine.entries()], default=0)
first = step + 1
if die_before:  # a SIGKILL inside this writer's second upload, right before it puts the object named so
    doomed, put = f"_e0_b{step + 2}.", mirror.fs.put_file
    def put_file(path, remote, *args, **kwargs):
        name = os.path.basename(remote)
        if name.startswith(die_before) and doomed in name:
            os.kill(os.getpid(), signal.SIGKILL)
        return put(path, remote, *args, **kwargs)
    mirror.fs.put_file = put_file
while True:
    step += 1
    state = torch.full((2 << 20,), float(step))  # 8 MiB
    engine.save((0, step), {stores.MODEL: {"w": state}, stores.TRAINING: {"step": step}}, CheckpointInfo(0, step, time=step),
                retention=(KeepMostRecentByCount(1), lambda e: True))
    if step == first:
        engine.drain()  # uploads run in the background: this one is in the bucket before the kill
    print(step, flush=True)
"""

# What each upload puts, in order, after its marker: model_state, training_state, then the record.
# The writers of these trials SIGKILL themselves right before one of them: `uploaded` were put.
MID_UPLOAD = {"model_state": [], "training_state": ["model_state"], "checkpoint": ["model_state", "training_state"]}


def test_sigkill_during_uploads_leaves_a_complete_checkpoint_in_the_bucket(tmp_path, bucket):
    """A writer uploading 8 MiB checkpoints back to back, keeping 1, is SIGKILLed: at random
    moments, and (so that kills certainly land inside uploads) right before each object of an
    upload; after each kill a fresh directory resumes from the bucket, and every record there
    names complete objects. The next writer removes the objects of an interrupted upload."""
    url, options, fs = bucket
    run = f"{url}/run"
    rng, interrupted = random.Random(7), 0
    for trial, die_before in enumerate(["", "model_state", "", "training_state", "", "checkpoint"]):
        local = tmp_path / f"writer{trial}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(local), run, json.dumps(options), die_before],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        committed = writer.stdout.readline()
        assert committed, writer.stderr.read()[-2000:]  # one checkpoint committed
        if not die_before:
            time.sleep(rng.uniform(0, 0.8))
            writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=120) == -signal.SIGKILL, writer.stderr.read()[-2000:]
        # The killed writer's lease on the prefix would refuse the next writer (another directory)
        # until it expires (tests/test_remote_background.py): what these trials test is the uploads.
        fs.rm_file(f"{run[5:]}/.trainer_ckpt.lock")
        names = objects(fs, run)
        records = [n for n in names if n.endswith(".json")]
        assert 1 <= len(records) <= 2, names  # the old set, or the old set plus one complete checkpoint
        named = set(records)
        for name in records:
            for f in json.loads(fs.cat_file(f"{run[5:]}/{name}"))["files"].values():
                assert fs.size(f"{run[5:]}/{f['name']}") == f["size"], (name, f)
                named.add(f["name"])
        strays = set(names) - named
        interrupted += bool(strays)
        if die_before:  # only the first checkpoint is complete; what the killed upload left, and nothing older
            step = int(committed)
            assert records == [f"checkpoint_e0_b{step}.json"], names
            doomed = f"e0_b{step + 1}"
            assert strays == {f".checkpoint_{doomed}.json.pending"} | {f"{kind}_{doomed}.th" for kind in MID_UPLOAD[die_before]}, names
        fresh = DefaultCheckpointer(tmp_path / f"fresh{trial}", upload_to=run, storage_options=options, read_only=True)
        model_state, training_state = fresh.load_checkpoint()
        assert torch.equal(model_state["w"], torch.full((2 << 20,), float(training_state["step"])))
        if die_before:
            assert training_state["step"] == step
    print(f"{interrupted} of 6 kills interrupted an upload")
    assert interrupted >= len(MID_UPLOAD), interrupted
    # The next writer removes what an interrupted upload left (its marker names it), once, before
    # its first upload; an object of our names that no marker or record vouches for stays.
    fs.pipe(f"{run[5:]}/model_state_e0_b998.th", b"half an upload")
    fs.pipe(f"{run[5:]}/.checkpoint_e0_b998.json.pending", json.dumps(["model_state_e0_b998.th"]).encode())
    fs.pipe(f"{run[5:]}/model_state_e0_b999.th", b"someone else's, or an upload of an earlier version")
    engine = Engine(Mirrored(stores.Pairs(str(tmp_path / "last")), run, options))
    engine.save((5, 0), {stores.MODEL: {"w": torch.zeros(1)}, stores.TRAINING: {}}, CheckpointInfo(5, 0, time=1e10))
    engine.close()
    names = objects(fs, run)
    named = {f["name"] for n in names if n.endswith(".json") for f in json.loads(fs.cat_file(f"{run[5:]}/{n}"))["files"].values()}
    assert set(names) == named | {n for n in names if n.endswith(".json")} | {"model_state_e0_b999.th"}, names


def test_ignite_disk_saver_with_a_bucket_url(tmp_path, bucket):
    """ignite's `DiskSaver("s3://...")`: n_saved applies in the bucket, and a new machine's
    `latest_checkpoint(url)` downloads and names the newest good checkpoint."""
    from ignite.engine import Engine as IgniteEngine, Events

    from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint

    url, options, fs = bucket
    run = f"{url}/ignite"
    model = torch.nn.Linear(2, 2)
    trainer = IgniteEngine(lambda engine, batch: None)
    saver = DiskSaver(run, storage_options=options, staging_dir=str(tmp_path / "staging"))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint({"model": model}, saver, n_saved=2))
    trainer.run([0, 1], max_epochs=3)
    saver.engine.close()
    assert objects(fs, run) == [".model_4.pt.json", ".model_4.pt.rng", ".model_6.pt.json", ".model_6.pt.rng",
                                "model_4.pt", "model_6.pt"]
    path = latest_checkpoint(run, storage_options=options, staging_dir=str(tmp_path / "new_machine"))
    assert path == str(tmp_path / "new_machine" / "model_6.pt")
    torch.testing.assert_close(torch.load(path, weights_only=True), model.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="`storage_options` and `staging_dir` are for a URL `dirname`"):
        DiskSaver(tmp_path / "local", storage_options=options)


NODE = """
import json, os, signal, sys, torch, torch.distributed as dist
from allennlp.training.trainer import TrainerCheckpoint
rank, url, options, local, store, kill_at = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt import stores

class Trainer:
    def __init__(self, b):
        self.b = b
    def get_checkpoint_state(self):
        return TrainerCheckpoint({"w": torch.full((1 << 18,), float(self.b * 10 + rank))},
                                 {"epochs_completed": 0, "batches_in_epoch_completed": self.b})

checkpointer = DefaultCheckpointer(local, save_every_num_batches=1, keep_most_recent_by_count=2, upload_to=url, storage_options=options)
checkpointer.state_is_sharded = True  # each rank its own shard, as with a sharded model
resumed = checkpointer.load_checkpoint()
start = resumed.trainer_state["batches_in_epoch_completed"] if resumed else 0
if resumed:
    assert torch.equal(resumed.model_state["w"], torch.full((1 << 18,), float(start * 10 + rank)))
print("resumed from", start, flush=True)
for b in range(start + 1, start + 4):
    checkpointer.maybe_save_checkpoint(Trainer(b), 0, b)
    print("saved", b, flush=True)
    if b == kill_at:
        checkpointer._engine.drain()  # uploads run in the background: this one is in the bucket first
        os.kill(os.getpid(), signal.SIGKILL)
checkpointer.close()
dist.destroy_process_group()
"""


def test_two_nodes_with_their_own_disks_resume_from_the_shared_bucket(tmp_path, bucket):
    """Two gloo processes as two nodes: each its own local directory, one bucket, sharded state.
    Node B is killed right after its second save is uploaded; node A fails with it. Both restart on new,
    empty disks and resume from the newest checkpoint that both finished uploading; a checkpoint
    only one node finished is not taken."""
    url, options, fs = bucket
    run = f"{url}/two_nodes"

    def nodes(tag, kill_at):
        procs = [subprocess.Popen([sys.executable, "-c", NODE, str(r), run, json.dumps(options), str(tmp_path / f"{tag}_node{r}"),
                                   str(tmp_path / f"{tag}_store"), str(kill_at if r == 1 else -1)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
        try:
            outs = [p.communicate(timeout=240)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        return procs, outs

    procs, outs = nodes("first", kill_at=2)
    assert procs[1].returncode == -signal.SIGKILL and procs[0].returncode != 0, outs
    assert "saved 2" in outs[1]
    assert "checkpoint_e0_b2_w1.json" in objects(fs, run)  # node B's part of e0_b2 is in the bucket
    procs, outs = nodes("second", kill_at=-1)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("resumed from 2" in o for o in outs), outs
    # Now node B dies while uploading e0_b5: its record never reaches the bucket. Node A's part is
    # complete, but the checkpoint is not: both resume from e0_b4.
    fs.rm_file(f"{run[5:]}/checkpoint_e0_b5_w1.json")
    procs, outs = nodes("third", kill_at=-1)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("resumed from 4" in o for o in outs), outs
    records = [n for n in objects(fs, run) if n.endswith(".json")]
    assert {"checkpoint_e0_b6_w0.json", "checkpoint_e0_b6_w1.json", "checkpoint_e0_b7_w0.json", "checkpoint_e0_b7_w1.json"} <= set(records)
    assert not [n for n in objects(fs, run) if "_b5_" in n]  # the incomplete one is gone, every node's part


def test_fvcore_checkpointer_with_a_bucket_url(tmp_path, bucket):
    """fvcore's `Checkpointer(model, save_dir="s3://...")` with `PeriodicCheckpointer(max_to_keep)`:
    the bucket keeps what fvcore keeps, and a new machine resumes from it."""
    from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

    url, options, fs = bucket
    run = f"{url}/fvcore"
    model = torch.nn.Linear(3, 3)
    checkpointer = Checkpointer(model, run, storage_options=options, staging_dir=str(tmp_path / "staging"))
    periodic = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=2)
    for iteration in range(8):
        with torch.no_grad():
            model.weight.add_(1.0)
        periodic.step(iteration)
    checkpointer.engine.close()
    assert [n for n in objects(fs, run) if not n.startswith(".")] == ["model_0000005.pth", "model_0000007.pth"]
    fresh = torch.nn.Linear(3, 3)
    elsewhere = Checkpointer(fresh, run, storage_options=options, staging_dir=str(tmp_path / "new_machine"))
    extra = elsewhere.resume_or_load("", resume=True)
    assert extra["iteration"] == 7
    torch.testing.assert_close(fresh.state_dict(), model.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="`storage_options` and `staging_dir` are for a URL `save_dir`"):
        Checkpointer(fresh, str(tmp_path / "local"), storage_options=options)


def test_mmengine_hook_with_a_bucket_url(tmp_path, bucket):
    """mmengine's `CheckpointHook(out_dir="s3://...")` in a real Runner: `max_keep_ckpts` applies in
    the bucket, and a Runner with `resume=True` on a new machine resumes from it."""
    from scripts.mmengine_run import build_runner
    from trainer_ckpt.mmengine import CheckpointHook

    url, options, fs = bucket
    hook = dict(type=CheckpointHook, interval=1, max_keep_ckpts=2, out_dir=f"{url}/mm", storage_options=options)
    first = build_runner(str(tmp_path / "a" / "work"), {**hook, "staging_dir": str(tmp_path / "staging_a")}, max_epochs=3)
    first.train()
    # Uploads run in the background, and the hook only waits for its saves at after_run: its uploads,
    # and the bucket prefix's lock, go with its engine's close.
    next(h for h in first.hooks if isinstance(h, CheckpointHook)).engine.close()
    assert [n for n in objects(fs, f"{url}/mm/work") if not n.startswith(".")] == ["epoch_2.pth", "epoch_3.pth"]
    runner = build_runner(str(tmp_path / "b" / "work"), {**hook, "staging_dir": str(tmp_path / "staging_b")},
                          max_epochs=4, resume=True)
    runner.train()
    next(h for h in runner.hooks if isinstance(h, CheckpointHook)).engine.close()
    assert runner._load_from == "trainer_ckpt://" + str(tmp_path / "staging_b" / "work" / "epoch_3.pth")
    assert [n for n in objects(fs, f"{url}/mm/work") if not n.startswith(".")] == ["epoch_3.pth", "epoch_4.pth"]
    with pytest.raises(ValueError, match="`storage_options` and `staging_dir` are for a URL `out_dir`"):
        CheckpointHook(interval=1, storage_options=options)


def test_a_failed_upload_is_raised_at_the_next_drain_and_keeps_the_earlier_checkpoints(tmp_path, bucket):
    """The bucket goes away after the first checkpoint: the second is saved here (uploads run in the
    background), its upload fails three times, and the error comes when the run waits for its
    uploads; the first stays in the bucket. With the bucket back, the next save uploads as usual."""
    from trainer_ckpt.stores.mirrored import UploadError

    url, options, fs = bucket
    run = f"{url}/run"
    checkpointer = DefaultCheckpointer(tmp_path / "here", keep_most_recent_by_count=None, upload_to=run, storage_options=options)
    store, delays = checkpointer._engine.store, []
    store.sleep = delays.append  # the backoff between attempts, without waiting
    checkpointer.maybe_save_checkpoint(trainer_at(1, 0), 1, 0)
    checkpointer._engine.drain()
    store.root = "no-such-bucket-anywhere/run"  # uploads now go to a bucket that is not there
    checkpointer.maybe_save_checkpoint(trainer_at(2, 0), 2, 0)
    with pytest.raises(UploadError, match=r"uploading checkpoint e2_b0 to s3://.* failed 3 times, got .*\. The checkpoints in .* are intact"):
        checkpointer._engine.drain()
    assert delays == [1.0, 2.0]
    assert sorted(p.name for p in (tmp_path / "here").iterdir() if p.suffix in (".th", ".json")) == [
        "checkpoint_e1_b0.json", "checkpoint_e2_b0.json", "model_state_e1_b0.th", "model_state_e2_b0.th",
        "training_state_e1_b0.th", "training_state_e2_b0.th"]
    assert [n for n in objects(fs, run) if n.endswith(".json")] == ["checkpoint_e1_b0.json"]
    store.root = run[len("s3://"):]
    checkpointer.maybe_save_checkpoint(trainer_at(3, 0), 3, 0)
    checkpointer.close()
    assert [n for n in objects(fs, run) if n.endswith(".json")] == ["checkpoint_e1_b0.json", "checkpoint_e3_b0.json"]


def test_the_shell_commands_read_a_bucket(tmp_path, bucket):
    """`python -m trainer_ckpt ls|verify|export s3://...` work on a bucket (through a temp copy);
    prune and quarantine are refused there: a bucket has no lock to keep a live run out."""
    from tests.test_cli import cli

    url, options, fs = bucket
    run = f"{url}/run"
    upload_epochs(tmp_path / "here", run, options, (1, 2))
    opts = ("--storage-options", json.dumps(options))
    listed = cli("ls", run, *opts)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:3]] == ["e1_b0", "e2_b0"]
    exported = cli("export", run, "--to", tmp_path / "w.th", *opts)
    assert exported.returncode == 0, exported.stderr
    torch.testing.assert_close(torch.load(tmp_path / "w.th", weights_only=True), trainer_at(2, 0)._model_state, rtol=0, atol=0)
    assert cli("verify", run, *opts).returncode == 0
    fs.pipe(f"{run[5:]}/model_state_e2_b0.th", b"not what was uploaded")
    bad = cli("verify", run, *opts)
    assert bad.returncode == 1 and "BAD: model_state_e2_b0.th has 21 bytes, its record says" in bad.stdout, bad.stdout
    refused = cli("prune", run, "--policy", "all", *opts)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"trainer_ckpt: cannot prune {run}: a bucket has no writer's lock to keep a live "
                                      "run out. Run it on the run's local directory: what it deletes there goes from the bucket too.")
    missing = cli("ls", f"{url}-nope/run", *opts)
    assert missing.returncode == 2 and missing.stderr.startswith(f"trainer_ckpt: cannot read {url}-nope/run: ")
