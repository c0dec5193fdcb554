"""
What a time-based save policy costs per batch under DDP: rank 0 decides and broadcasts one byte
(trainer_ckpt.core.distributed.primary_decides), and what `save_on_signals` costs per step (an
all-reduce of one number: Preemption.requested), both on the checkpoint's own gloo group, measured with 2 real gloo processes on this machine
(by hand, not in CI). Baselines from the same run: the collective a DDP step cannot avoid (an
all_reduce of one 25 MiB gradient bucket, DDP's default bucket size), and a 1-element all_reduce
(the smallest collective). Also the whole `maybe_save_checkpoint` call that does not save, with a
time-based policy (with the broadcast) and a batch-based one (no collective).

    .venv/bin/python scripts/bench_collective.py [--calls 2000]
"""
import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, calls: int) -> float:
    """Median seconds per call over 5 rounds of `calls` calls, ranks aligned before each round."""
    rounds = []
    for _ in range(5):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def rank_main(rank: int, store: str, calls: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    from allennlp.training.trainer import TrainerCheckpoint

    from trainer_ckpt import DefaultCheckpointer
    from trainer_ckpt.core.distributed import primary_decides
    from trainer_ckpt.core.preemption import Preemption

    class Trainer:
        def get_checkpoint_state(self):
            return TrainerCheckpoint({"w": torch.zeros(2)}, {"epochs_completed": 0, "batches_in_epoch_completed": 1})

    trainer, bucket, one = Trainer(), torch.zeros(25 * (1 << 20) // 4), torch.zeros(1)
    rows = {
        "broadcast of the decision (primary_decides)": timed(lambda: primary_decides(False), calls),
        "preemption agreement (Preemption.requested)": timed(Preemption((signal.SIGUSR2,)).requested, calls),
        "all_reduce of 1 element": timed(lambda: dist.all_reduce(one), calls),
        "all_reduce of a 25 MiB gradient bucket": timed(lambda: dist.all_reduce(bucket), max(calls // 100, 10)),
    }
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        by_time = DefaultCheckpointer(a + "/run", save_every_num_seconds=10**9, save_completed_epochs=False)
        by_batches = DefaultCheckpointer(b + "/run", save_every_num_batches=10**9, save_completed_epochs=False)
        rows["maybe_save_checkpoint, every_num_seconds (no save)"] = timed(lambda: by_time.maybe_save_checkpoint(trainer, 0, 1), calls)
        rows["maybe_save_checkpoint, every_num_batches (no save)"] = timed(lambda: by_batches.maybe_save_checkpoint(trainer, 0, 1), calls)
        by_time.close(), by_batches.close()
    if rank == 0:
        with open(out, "w") as f:
            for name, seconds in rows.items():
                f.write(f"{name}\t{seconds}\n")
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.tsv")
        mp.spawn(rank_main, args=(os.path.join(tmp, "store"), args.calls, out), nprocs=2)
        rows = dict(line.rstrip("\n").split("\t") for line in open(out))
    rows = {k: float(v) for k, v in rows.items()}
    bucket = rows["all_reduce of a 25 MiB gradient bucket"]
    print(f"2 gloo processes, {args.calls} calls per round, median of 5 rounds (rank 0's times)")
    print(f"{'':52s} {'per call':>12s} {'x 25 MiB all_reduce':>20s}")
    for name, seconds in rows.items():
        print(f"{name:52s} {seconds * 1e6:9.1f} us {seconds / bucket:20.4f}")
    extra = rows["maybe_save_checkpoint, every_num_seconds (no save)"] - rows["maybe_save_checkpoint, every_num_batches (no save)"]
    print(f"the time policy's collective adds {extra * 1e6:.1f} us per batch ({extra / bucket:.4f} x one gradient bucket's all_reduce)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
