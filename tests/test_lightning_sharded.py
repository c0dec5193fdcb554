"""
The Lightning face with sharded state: two real processes in a gloo group on the CPU, each a real
Lightning Trainer with `ModelParallelStrategy` (Lightning's FSDP2) holding half of a
`fully_shard`ed model and its Adam state (tests/lightning_fsdp_rank.py), our `ModelCheckpoint`
saving every 2 steps through the engine, synchronously and in the background.
"""
import os
import socket
import subprocess
import sys

import pytest

from tests._resume import assert_starts
from tests.conftest import ROOT
from trainer_ckpt.core.lock import LOCK_FILE as LOCK
from trainer_ckpt.io import durable

RANK = os.path.join(ROOT, "tests", "lightning_fsdp_rank.py")
NAMES = ["epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("background", [False, True], ids=["sync", "background"])
def test_model_parallel_strategy_resumes_from_last_bit_exact(tmp_path, background):
    """Stopped after step 4, `fit(ckpt_path="last")` starts at step 4 and ends bit-identical to
    an uninterrupted run, and so does a new run in another directory from the step-4 checkpoint's
    path (each rank checks the whole weights and Adam moments); every checkpoint
    is a DCP directory written by the engine, each rank's part listed in its record; the top-k
    retention deletes whole directories."""
    env = {**os.environ, "FSDP_BACKGROUND": "1" if background else "0"}
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, RANK, "resume", str(rank), str(tmp_path), port],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
             for rank in range(2)]
    outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    for rank, output in enumerate(outputs):
        assert f"rank {rank}: resume ok" in output, output[-4000:]
    assert "Restoring states from the checkpoint path at" in outputs[0] and "epoch=0-step=4.ckpt" in outputs[0], outputs[0][-4000:]
    assert_starts(tmp_path / "starts", 0, 4, 4, ranks=2)  # the last: another run, from the step-4 checkpoint's path

    directory = tmp_path / "ckpt"
    # save_top_k=2 (monitor="step"): step 2 deleted (its directory and record), step 4 kept as
    # Lightning keeps the checkpoint a run resumed from.
    assert sorted(os.listdir(directory)) == [f".{n}.{kind}" for n in NAMES for kind in ("json", "rng")] + [LOCK] + NAMES
    for name, step in zip(NAMES, (4, 6, 8)):
        # Ours, not Lightning's own DCP save (which puts a `meta.pt` beside the parts and writes no record).
        assert sorted(os.listdir(directory / name)) == [".metadata", "__0_0.distcp", "__1_0.distcp"], name
        record = durable.read_json(str(directory / f".{name}.json"))
        assert sorted(record["files"]["checkpoint"]["parts"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"], record
        assert record["world_size"] == 2 and record["global_step"] == step, record
