"""
Background uploads and the bucket prefix's lock (`stores.Mirrored`), against a real S3-compatible
server (moto's standalone server on 127.0.0.1, the `bucket` fixture): saves return while uploads
are held, retention deletes only after the newer checkpoint is in the bucket, failed uploads are
retried then raised, SIGKILLs during uploads, and one run per prefix.
"""
import json
import logging
import re
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.conftest import ROOT, FakeClock
from trainer_ckpt import stores
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.retention_policies import KeepMostRecentByCount
from trainer_ckpt.stores.mirrored import LOCK, Mirrored, PrefixLocked, UploadError

KEEP_ONE = (KeepMostRecentByCount(1), lambda entry: True)


def engine_on(local, run, options, **kwargs):
    return Engine(Mirrored(stores.Pairs(str(local)), run, options, **kwargs))


def save(engine, step, retention=None):
    state = {stores.MODEL: {"w": torch.full((1024,), float(step))}, stores.TRAINING: {"step": step}}
    engine.save((0, step), state, CheckpointInfo(0, step, time=step), retention=retention)


def files(step):
    return [f"checkpoint_e0_b{step}.json", f"model_state_e0_b{step}.th", f"training_state_e0_b{step}.th"]


def objects(fs, run):
    fs.invalidate_cache()
    try:
        return sorted(os.path.basename(p) for p in fs.ls(run[len("s3://"):], detail=False))
    except FileNotFoundError:
        return []


def checkpoints(fs, run):
    return [n for n in objects(fs, run) if not n.startswith(".")]


def local_files(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


class Uploads:
    """The store's own s3fs calls, unchanged, but a put waits for `go` (and may fail first,
    `failing` times for names containing `failing_name`, as a dropped connection would); each
    finished put and each deletion is recorded, with the local files at that moment."""

    def __init__(self, fs, monkeypatch, local):
        self.go, self.threads, self.events = threading.Event(), set(), []
        self.failing_name, self.failing = None, 0
        put, rm_file, rm = fs.put_file, fs.rm_file, fs.rm

        def put_file(lpath, rpath, *args, **kwargs):
            self.threads.add(threading.get_ident())
            assert self.go.wait(10), "held for 10 s"
            name = os.path.basename(rpath)
            if self.failing and self.failing_name in name:
                self.failing -= 1
                raise ConnectionResetError(f"connection reset while putting {name}")
            out = put(lpath, rpath, *args, **kwargs)
            self.events.append(("put", name, local_files(local)))
            return out

        def removing(remove):
            def wrapped(path, *args, **kwargs):
                self.events.append(("rm", os.path.basename(path), local_files(local)))
                return remove(path, *args, **kwargs)
            return wrapped

        monkeypatch.setattr(fs, "put_file", put_file)
        monkeypatch.setattr(fs, "rm_file", removing(rm_file))
        monkeypatch.setattr(fs, "rm", removing(rm))


@pytest.fixture
def held(monkeypatch):
    """Makes `Uploads`; lets every put go at the end of the test, so that no upload waits on."""
    made = []
    yield lambda fs, local: made.append(Uploads(fs, monkeypatch, local)) or made[-1]
    for uploads in made:
        uploads.go.set()


def test_saves_return_while_uploads_are_held_and_close_waits_for_them(tmp_path, bucket, held):
    url, options, fs = bucket
    run = f"{url}/run"
    engine = engine_on(tmp_path / "here", run, options)
    uploads = held(engine.store.fs, tmp_path / "here")
    save(engine, 1)
    save(engine, 2)  # each would wait 10 s here, then fail, if it uploaded on this thread
    assert local_files(tmp_path / "here") == sorted(files(1) + files(2))
    deadline = time.time() + 10
    while not uploads.threads and time.time() < deadline:
        time.sleep(0.05)
    assert uploads.threads and threading.get_ident() not in uploads.threads  # held on another thread
    assert checkpoints(fs, run) == []
    # A third save waits for the oldest upload (at most two queued): here, until the puts go.
    third = threading.Thread(target=save, args=(engine, 3))
    third.start()
    third.join(0.5)
    assert third.is_alive()
    threading.Timer(0.5, uploads.go.set).start()
    third.join(20)
    engine.close()  # waits for the uploads
    assert checkpoints(fs, run) == sorted(files(1) + files(2) + files(3))
    assert LOCK not in objects(fs, run)  # close releases the prefix


def test_retention_deletes_the_older_checkpoint_only_after_the_newer_one_is_in_the_bucket(tmp_path, bucket, held):
    url, options, fs = bucket
    run, local = f"{url}/run", tmp_path / "here"
    engine = engine_on(local, run, options)
    save(engine, 1, KEEP_ONE)
    engine.drain()
    uploads = held(engine.store.fs, local)
    save(engine, 2, KEEP_ONE)  # retention drops e0_b1: queued behind e0_b2's upload
    assert [e.key for e in engine.store.list().complete] == [(0, 2)]  # a listing leaves it out already
    assert checkpoints(fs, run) == files(1) and local_files(local) == sorted(files(1) + files(2))
    uploads.go.set()
    engine.drain()
    events = [(kind, name) for kind, name, _ in uploads.events]
    record = events.index(("put", "checkpoint_e0_b2.json"))
    deletions = [i for i, (kind, name) in enumerate(events) if kind == "rm" and "_b1" in name]
    assert deletions and min(deletions) > record, events
    assert set(files(1)) <= set(uploads.events[record][2])  # its local files too were there then
    assert checkpoints(fs, run) == files(2) and local_files(local) == files(2)
    engine.close()


def test_a_failed_upload_is_retried_then_raised_and_the_bucket_keeps_the_older_checkpoint(tmp_path, bucket, held):
    url, options, fs = bucket
    run, local, delays = f"{url}/run", tmp_path / "here", []
    engine = engine_on(local, run, options, attempts=3, backoff=0.5, sleep=delays.append)
    uploads = held(engine.store.fs, local)
    uploads.go.set()
    save(engine, 1, KEEP_ONE)
    uploads.failing_name, uploads.failing = "_b2", 2  # two dropped connections: the third attempt goes through
    save(engine, 2, KEEP_ONE)
    engine.drain()
    assert delays == [0.5, 1.0] and checkpoints(fs, run) == files(2)
    uploads.failing_name, uploads.failing = "_b3", 99
    save(engine, 3, KEEP_ONE)
    with pytest.raises(UploadError) as raised:
        engine.drain()
    assert isinstance(raised.value, OSError)
    assert str(raised.value) == (
        f"trainer_ckpt: uploading checkpoint e0_b3 to {run} failed 3 times, got ConnectionResetError: connection reset "
        f"while putting model_state_e0_b3.th. The checkpoints in {local} are intact, and the bucket keeps its earlier "
        "ones. Check the bucket, the network and storage_options (endpoint, credentials); the next save uploads as usual.")
    assert delays == [0.5, 1.0, 0.5, 1.0]
    engine.drain()  # raised once
    # e0_b2's deletion, queued behind the failed upload, did not run: complete in the bucket, and here.
    assert [n for n in checkpoints(fs, run) if n.endswith(".json")] == ["checkpoint_e0_b2.json"]
    record = json.loads(fs.cat_file(f"{run[5:]}/checkpoint_e0_b2.json"))
    for f in record["files"].values():
        assert fs.size(f"{run[5:]}/{f['name']}") == f["size"]
    assert set(files(2) + files(3)) <= set(local_files(local))
    engine.close()


WRITER = """
import json, sys, time, torch
from trainer_ckpt import stores
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.retention_policies import KeepMostRecentByCount
from trainer_ckpt.stores.mirrored import Mirrored
local, url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
engine = Engine(Mirrored(stores.Pairs(local), url, options), background=True)
engine.clean_up()
step = max([e.key[1] for e in engine.entries()], default=0)
first = step + 1
while True:
    step += 1
    engine.save((0, step), {stores.MODEL: {"w": torch.full((1 << 20,), float(step))}, stores.TRAINING: {"step": step}},
                CheckpointInfo(0, step, time=step), retention=(KeepMostRecentByCount(1), lambda e: True))
    if step == first:
        engine.drain()  # one in the bucket before the kill
    print(step, flush=True)
    time.sleep(0.02)  # a training step
"""


def test_sigkill_during_background_uploads_leaves_a_complete_checkpoint_that_a_fresh_directory_resumes(tmp_path, bucket):
    """One run, killed at random moments while its background uploads go on (4 MiB checkpoints,
    keeping one), restarted on its directory each time (it takes its own lock over): after each
    kill the bucket holds a complete checkpoint, and a fresh directory resumes from the newest."""
    url, options, fs = bucket
    run, rng = f"{url}/run", random.Random(3)
    for trial in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "run"), run, json.dumps(options)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = writer.stdout.readline()
        assert first, writer.stderr.read()[-2000:]  # started (the lock taken over), one checkpoint uploaded
        time.sleep(rng.uniform(0.1, 0.8))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=60) == -signal.SIGKILL
        records = [n for n in checkpoints(fs, run) if n.endswith(".json")]
        assert 1 <= len(records) <= 2, records  # the old set, or the old set plus one complete checkpoint
        steps = []
        for name in records:
            record = json.loads(fs.cat_file(f"{run[5:]}/{name}"))
            for f in record["files"].values():
                assert fs.size(f"{run[5:]}/{f['name']}") == f["size"], (name, f)
            steps.append(record["batches_in_epoch_completed"])
        assert min(steps) >= int(first)  # the killed run's own: what the earlier ones wrote has gone
        reader = Engine(Mirrored(stores.Pairs(str(tmp_path / f"fresh{trial}")), run, options), read_only=True)
        entry, states = reader.newest_good()
        assert entry.key == (0, max(steps)) and states[stores.TRAINING]["step"] == max(steps)
        assert torch.equal(states[stores.MODEL]["w"], torch.full((1 << 20,), float(max(steps))))


def lock_of(fs, run):
    return json.loads(fs.cat_file(f"{run[5:]}/{LOCK}"))


HOLDER = """
import json, os, sys, time
from trainer_ckpt import stores
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.stores.mirrored import Mirrored, PrefixLocked
engine = Engine(Mirrored(stores.Pairs(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), lease=float(sys.argv[4])))
print("locked", flush=True)
while not os.path.exists(sys.argv[1] + ".stop"):  # a training loop, until told to end; its exit releases the prefix
    try:
        engine.check()
    except PrefixLocked as e:
        print(e, flush=True)
        engine.close()
        print("closed", flush=True)
        break
    time.sleep(0.05)
"""


def holder(tmp_path, run, options, lease):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), run, json.dumps(options), str(lease)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "locked\n", process.stderr.read()[-2000:]
    return process


def test_the_same_run_restarted_after_sigkill_takes_its_lock_over(tmp_path, bucket):
    url, options, fs = bucket
    run = f"{url}/run"
    killed = holder(tmp_path, run, options, lease=60)
    lock = lock_of(fs, run)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    restarted = engine_on(tmp_path / "run", run, options)  # its own directory: at once
    taken = lock_of(fs, run)
    assert (taken["pid"], taken["directory"]) == (os.getpid(), str(tmp_path / "run")) and taken["token"] != lock["token"]
    assert lock["expires"] - time.time() > 30  # the killed run's lease had time left
    restarted.close()


def test_a_new_machine_waits_out_the_lease_of_a_killed_run_then_takes_the_prefix_over(tmp_path, bucket, caplog):
    """A requeued job on another machine: the killed run's lease is live but never renewed again;
    the new run waits (its clock and sleep injected) until the lease expires, then takes over."""
    url, options, fs = bucket
    run = f"{url}/run"
    killed = holder(tmp_path, run, options, lease=60)
    lock = lock_of(fs, run)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    clock = FakeClock(time.time())

    def sleep(seconds):
        clock.now += seconds

    with caplog.at_level(logging.WARNING, logger="trainer_ckpt"):
        elsewhere = engine_on(tmp_path / "elsewhere", run, options, clock=clock, sleep=sleep)
    assert f"is locked by another run (host {socket.gethostname()}, pid {killed.pid}" in caplog.text
    assert clock.now >= lock["expires"] and lock_of(fs, run)["directory"] == str(tmp_path / "elsewhere")
    elsewhere.close()


def test_a_second_run_on_the_prefix_is_refused_naming_the_first(tmp_path, bucket):
    """The first run is alive: while the second waits, it renews its lease (every second here)."""
    url, options, fs = bucket
    run = f"{url}/run"
    first = holder(tmp_path, run, options, lease=3)
    try:
        held = lock_of(fs, run)
        assert {k: held[k] for k in ("host", "pid", "directory")} == {
            "host": socket.gethostname(), "pid": first.pid, "directory": str(tmp_path / "run")}
        assert 0 <= held["started"] - time.time() + 3 <= held["expires"] - time.time() <= 3
        with pytest.raises(PrefixLocked) as refused:
            engine_on(tmp_path / "second", run, options)
        assert re.fullmatch(re.escape(
            f"trainer_ckpt: {run} is in use by another run, got its lock held by host {socket.gethostname()}, pid "
            f"{first.pid}, directory {tmp_path / 'run'}, with ") + "[0-9] s" + re.escape(
            " left on its lease (renewed while it runs). Stop that run or wait for it to end, give this run another URL, "
            "or restart it on that host from that directory (it takes the lock over at once); a run that died leaves a "
            "lease that expires within 60 s, which a new run waits out."), str(refused.value)), str(refused.value)
        assert lock_of(fs, run)["pid"] == first.pid
        open(str(tmp_path / "run") + ".stop", "w").close()  # the first run ends without closing its engine:
        first.wait(timeout=60)  # its exit releases the prefix
        assert LOCK not in objects(fs, run)
        second = engine_on(tmp_path / "second", run, options)  # its directory's lock was let go on refusal
        assert lock_of(fs, run)["directory"] == str(tmp_path / "second")
        second.close()
    finally:
        first.kill()


def test_a_live_run_renews_its_lease_and_once_expired_it_is_taken_over_and_the_run_learns_it_lost_the_prefix(tmp_path, bucket):
    """A run with a 3 s lease renews it every second. Stopped (SIGSTOP: a stalled process), its
    lease has expired by another run's clock (10 s ahead, injected): that run takes the prefix over.
    Continued, the first run's next renewal finds the lock another's: its loop gets the error, and
    its close leaves the new lock alone."""
    url, options, fs = bucket
    run = f"{url}/run"
    first = holder(tmp_path, run, options, lease=3)
    try:
        expires = lock_of(fs, run)["expires"]
        deadline = time.time() + 10
        while lock_of(fs, run)["expires"] == expires and time.time() < deadline:
            time.sleep(0.1)
        assert lock_of(fs, run)["expires"] > expires  # renewed
        os.kill(first.pid, signal.SIGSTOP)
        second = engine_on(tmp_path / "second", run, options, clock=FakeClock(time.time() + 10))
        assert lock_of(fs, run)["directory"] == str(tmp_path / "second")
        os.kill(first.pid, signal.SIGCONT)
        assert first.stdout.readline() == (
            f"trainer_ckpt: lost the lock on {run}, got it held by host {socket.gethostname()}, pid {os.getpid()}, "
            f"directory {tmp_path / 'second'}: its lease expired while this run could not renew it (network, or a "
            "stalled process), or someone removed it. Stop any other run writing under this prefix, then restart this one.\n")
        assert first.stdout.readline() == "closed\n" and first.wait(timeout=60) == 0
        assert lock_of(fs, run)["directory"] == str(tmp_path / "second")
        second.close()
        assert LOCK not in objects(fs, run)
    finally:
        first.kill()


def test_a_second_store_of_the_same_process_takes_the_lock_over_after_the_first_ones_uploads(tmp_path, bucket, held):
    """A new checkpointer on the URL in the same process (a notebook, a new machine in a test): the
    first one's queued uploads run first, then its lock is handed over; a download waits too."""
    url, options, fs = bucket
    run = f"{url}/run"
    first = engine_on(tmp_path / "first", run, options)
    uploads = held(first.store.fs, tmp_path / "first")
    save(first, 1)
    threading.Timer(0.5, uploads.go.set).start()
    second = engine_on(tmp_path / "second", run, options)
    assert checkpoints(fs, run) == files(1)
    assert lock_of(fs, run)["directory"] == str(tmp_path / "second")
    entry, states = second.newest_good()
    assert entry.key == (0, 1) and torch.equal(states[stores.MODEL]["w"], torch.full((1024,), 1.0))
    first.close()  # not its lock any more
    assert lock_of(fs, run)["directory"] == str(tmp_path / "second")
    second.close()


def test_bad_retry_and_lease_settings_are_refused_at_construction(tmp_path, bucket):
    url, options, _ = bucket
    local = stores.Pairs(str(tmp_path))
    with pytest.raises(ValueError, match=r"^trainer_ckpt.stores.Mirrored: `attempts` must be an int >= 1, got 0\. Use e\.g\. attempts=3\.$"):
        Mirrored(local, f"{url}/run", options, attempts=0)
    with pytest.raises(ValueError, match=r"^trainer_ckpt.stores.Mirrored: `lease` must be a number of seconds \(> 0 for lease\), got 0\. "):
        Mirrored(local, f"{url}/run", options, lease=0)
    with pytest.raises(ValueError, match=r"`backoff` must be a number of seconds .*, got '1'\. Use e\.g\. backoff=1\.0\.$"):
        Mirrored(local, f"{url}/run", options, backoff="1")
