"""
Sharded state through torch.distributed.checkpoint, for every face: two real processes in a gloo
group on the CPU, each holding half of a real FSDP2 (`fully_shard`) model and its Adam state
(tests/fsdp_rank.py). Bit-exact resume, retention, fallback from a changed shard, resharding
onto a plain model in one process, the CLI, SIGKILL of both ranks mid-save, and safe loading.
"""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests._resume import assert_starts
from tests.conftest import ROOT
from trainer_ckpt.io import sharded
from trainer_ckpt.core.engine import Engine, UnsafeCheckpointError
from trainer_ckpt.stores import NamedFiles
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable

RANK = os.path.join(ROOT, "tests", "fsdp_rank.py")


def start(scenario, directory, store, *extra, background=False):
    env = {**os.environ, "FSDP_BACKGROUND": "1" if background else "0"}
    return [subprocess.Popen([sys.executable, RANK, scenario, str(rank), str(directory), str(store), *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
            for rank in range(2)]


def run_ranks(scenario, tmp_path, *extra, background=False):
    directory = tmp_path / "run"
    directory.mkdir()
    ranks = start(scenario, directory, tmp_path / "store", *extra, background=background)
    outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    for rank, output in enumerate(outputs):
        assert f"rank {rank}: {scenario} ok" in output, "\n".join(f"--- rank {r}:\n{o[-3000:]}" for r, o in enumerate(outputs))
    return directory, outputs


def plain_model(width=16):
    return torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


BACKGROUND = pytest.mark.parametrize("background", [False, True], ids=["sync", "background"])


@BACKGROUND
def test_fvcore_fsdp2_resumes_bit_exact_falls_back_and_reshards_onto_one_process(tmp_path, background):
    directory, outputs = run_ranks("fvcore", tmp_path, background=background)
    assert "Checkpoint model_0000005 in" in outputs[0] and "model_0000005.pth/__1_0.distcp has CRC32" in outputs[0]
    assert "Falling back to an older checkpoint" in outputs[0]
    assert sorted(os.listdir(directory / "corrupt")) == [".model_0000005.pth.json", ".model_0000005.pth.rng", "model_0000005.pth"]
    record = durable.read_json(str(directory / ".model_0000003.pth.json"))
    assert sorted(record["files"]["checkpoint"]["parts"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert record["world_size"] == 2

    # Resharded: one process, a plain model, fvcore's own load call: the shards of both ranks.
    from trainer_ckpt.fvcore import Checkpointer

    states = torch.load(directory / "reference.pt", weights_only=True)
    model, optimizer = plain_model(), None
    extra = Checkpointer(model, str(directory), save_to_disk=False).load(str(directory / "model_0000003.pth"))
    assert extra["iteration"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[3][key]), key

    # The CLI verifies the parts and exports the whole model from the shards.
    cli = [sys.executable, "-m", "trainer_ckpt"]
    verified = subprocess.run(cli + ["verify", str(directory)], capture_output=True, text=True, cwd=ROOT)
    assert verified.returncode == 0 and "model_0000003" in verified.stdout, verified.stdout + verified.stderr
    exported = subprocess.run(cli + ["export", str(directory), "--to", str(tmp_path / "weights.pt")],
                              capture_output=True, text=True, cwd=ROOT)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    for key, value in states[3].items():
        assert torch.equal(weights[key], value), key


@BACKGROUND
def test_ignite_fsdp2_resumes_bit_exact(tmp_path, background):
    directory, _ = run_ranks("ignite", tmp_path, background=background)
    assert os.path.isdir(directory / "checkpoint_4.pt")


@BACKGROUND
def test_mmengine_fsdp2_resumes_bit_exact_in_a_real_runner(tmp_path, background):
    directory, _ = run_ranks("mmengine", tmp_path, background=background)
    assert os.path.isdir(directory / "run" / "epoch_2.pth")
    # Both ranks' Runners: 2 epochs from the start, then resumed after epoch 2 (4 iterations an epoch per rank).
    assert_starts(directory / "run", 0, 8, ranks=2)


@BACKGROUND
def test_allennlp_fsdp2_resumes_bit_exact(tmp_path, background):
    directory, _ = run_ranks("allennlp", tmp_path, background=background)
    record = durable.read_json(str(directory / "checkpoint_e0_b2.json"))
    assert set(record["files"]) == {"model_state", "training_state"}
    assert all("parts" in f for f in record["files"].values())


def test_sharded_state_in_a_bucket_resumes_on_a_new_machine(tmp_path, bucket):
    """Every part uploaded, the record last; retention deletes in the bucket; an empty directory resumes."""
    url, options, fs = bucket
    run_ranks("bucket", tmp_path, f"{url}/run", json.dumps(options))
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/run", detail=False))
    assert names == [".model_0000003.pth.json", ".model_0000003.pth.rng", "model_0000003.pth"], names
    parts = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{url}/run/model_0000003.pth"))
    assert parts == [".metadata", "__0_0.distcp", "__1_0.distcp"], parts


def _writing_shards(directory) -> bool:
    """Whether a sharded save is writing its parts: a checkpoint's temp directory holds a file. DCP
    writes parts only after a collective planning step, so both ranks are inside the save then."""
    for name in os.listdir(directory):
        if name.startswith(".model_") and ".tmp-" in name:
            try:
                if os.listdir(directory / name):
                    return True
            except (FileNotFoundError, NotADirectoryError):
                pass
    return False


@BACKGROUND
def test_sigkill_of_both_ranks_mid_save_leaves_complete_checkpoints_only(tmp_path, background):
    """Back-to-back sharded saves; the job is killed (rank 1, then rank 0) twice at a random moment,
    then as soon as a save is seen writing its shards, so that one kill certainly lands inside a
    save. Each start resumes from the newest checkpoint the kill left."""
    from trainer_ckpt.faces._fvcore.checkpointer import LAYOUT, MAIN

    directory = tmp_path / "run"
    directory.mkdir()
    rng, landed, newest, resumed_at = random.Random(0), [], -1, []
    moments = ["random", "random", "in_save"]
    for round, moment in enumerate(moments):
        store = tmp_path / f"store{round}"
        ranks = start("loop", directory, store, background=background)
        resumed_at.append(newest + 1)
        deadline = time.time() + 120
        while not any(n.endswith(".pth") and n != f"model_{newest:07d}.pth" and int(n[6:13]) > newest
                      for n in os.listdir(directory) if n.startswith("model_")):
            assert time.time() < deadline and all(r.poll() is None for r in ranks), [r.communicate()[0][-3000:] for r in ranks if r.poll() is not None]
            time.sleep(0.05)
        if moment == "random":
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            while not _writing_shards(directory):
                assert time.time() < deadline and all(r.poll() is None for r in ranks)
                time.sleep(0.001)
        for rank in reversed(ranks):
            rank.send_signal(signal.SIGKILL)
        for rank in ranks:
            rank.communicate()
        landed.append(any(n.startswith(".model_") and ".tmp-" in n for n in os.listdir(directory)))
        if moment == "in_save" and not landed[-1] and len(moments) < 6:
            moments.append("in_save")  # the save ended between the look and the kill: once more

        # What is listed is complete and verifies; leftovers of the killed save are removed.
        engine = Engine(NamedFiles(str(directory), LAYOUT), where="test")
        entry, states = engine.newest_good()
        # (The engine's own temp files: a `.last_checkpoint.tmp-*` of a kill inside the pointer's
        # write is the face's to remove, not this bare engine's.)
        assert not any(n.startswith(".model_") and ".tmp-" in n for n in os.listdir(directory)), " ".join(sorted(os.listdir(directory)))
        iteration = states[MAIN]["iteration"]
        assert iteration >= newest
        for key, value in states[MAIN]["model"].items():
            assert torch.equal(value, torch.full_like(value, float(iteration))), (key, iteration)
        for other in engine.entries():
            engine.verify(other)
        engine.close()
        newest = iteration
    assert landed[-1], f"no kill landed during a save: the test did not test what it says ({list(zip(moments, landed))})"
    print(f"kills during a save: {list(zip(moments, landed))}")
    assert_starts(directory, *resumed_at, ranks=2)  # each start went on from the newest checkpoint


@pytest.mark.parametrize("layout", ["fvcore", "allennlp"])
def test_sharded_state_left_without_its_record_is_removed_and_a_peers_is_kept(tmp_path, layout):
    """Retention removes a checkpoint's record first; a kill then leaves our DCP directory without
    it (the flake this test pins down: it was taken for a peer's file and failed to load). It is an
    incomplete checkpoint: clean-up removes it, half-removed too. A peer's sharded checkpoint (a
    Lightning directory, with its `meta.pt`) is not ours and stays."""
    from trainer_ckpt import stores
    from trainer_ckpt.checkpoint_info import CheckpointInfo
    from trainer_ckpt.stores.named import FVCORE, MAIN

    store = NamedFiles(str(tmp_path), FVCORE) if layout == "fvcore" else stores.Pairs(str(tmp_path))
    engine = Engine(store)
    keys = ["model_0000001", "model_0000002", "model_0000003"] if layout == "fvcore" else [(0, 1), (0, 2), (0, 3)]
    roles = store.files(keys[0])
    engine.save(keys[0], {role: {"w": torch.full((4,), 1.0)} for role in roles}, CheckpointInfo(0, 1, time=1001.0))
    for key, half in ((keys[1], False), (keys[2], True)):  # a deletion killed after the record, and mid-rmtree
        for role, path in store.files(key).items():
            tmp, _ = sharded.save_temp({"w": torch.arange(4.0)}, path)
            os.rename(tmp, path)
            if half:
                os.remove(os.path.join(path, sharded.DCP_METADATA))
    peers = [tmp_path / name for name in (["model_0000000.pth"] if layout == "fvcore" else ["model_state_e0_b0.th", "training_state_e0_b0.th"])]
    for peer in peers:
        tmp, _ = sharded.save_temp({"w": torch.arange(4.0)}, str(peer))
        os.rename(tmp, peer)
        torch.save({"lightning": 1}, peer / "meta.pt")
        os.utime(peer, (1000.0, 1000.0))  # older than ours: not loaded (and so not quarantined)

    listing = store.list()
    assert sorted(listing.incomplete) == sorted(keys[1:]), listing
    assert len(listing.complete) == 2, listing
    entry, states = engine.newest_good()
    assert entry.key == keys[0] and torch.equal(next(iter(states.values()))["w"], torch.full((4,), 1.0))
    engine.close()
    left = sorted(os.listdir(tmp_path))
    for key in keys[1:]:
        assert not any(os.path.exists(path) for path in store.files(key).values()), left
    assert all((peer / "meta.pt").exists() and (peer / sharded.DCP_METADATA).exists() for peer in peers), left


def test_sharded_state_loads_safely(tmp_path):
    """DCP unpickles its metadata and values with plain pickle; ours refuses anything but its own types."""
    state = {"w": torch.arange(4.0), "step": 3, "note": "ok"}
    tmp, record = sharded.save_temp(state, str(tmp_path / "a.pth"))
    os.rename(tmp, tmp_path / "a.pth")
    loaded = sharded.load(str(tmp_path / "a.pth"))
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3 and loaded["note"] == "ok"
    sharded.verify(str(tmp_path / "a.pth"), record)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    metadata = tmp_path / "a.pth" / ".metadata"
    original = metadata.read_bytes()
    metadata.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(loading.UnsafeCheckpoint, match="posix.system|os.system"):
        sharded.load(str(tmp_path / "a.pth"))
    metadata.write_bytes(original)
    tmp, _ = sharded.save_temp({"w": torch.zeros(2), "evil": Boom()}, str(tmp_path / "b.pth"))
    with pytest.raises(loading.UnsafeCheckpoint):
        sharded.load(tmp)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(loading.BadCheckpoint, match="has CRC32"):
        data = tmp_path / "a.pth" / "__0_0.distcp"
        content = data.read_bytes()
        data.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))
        sharded.verify(str(tmp_path / "a.pth"), record)


@BACKGROUND
def test_a_failing_write_on_one_rank_fails_the_save_on_both_and_keeps_the_earlier_checkpoint(tmp_path, background):
    _, outputs = run_ranks("failing", tmp_path, background=background)
    for rank, output in enumerate(outputs):
        assert f"rank {rank}: the save failed:" in output and "model_0000001" in output, output[-3000:]
    assert "No space left on device" in outputs[1]
