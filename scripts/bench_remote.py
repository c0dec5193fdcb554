"""
Upload throughput to S3 against raw s3fs puts of the same bytes, in one run (by hand, not in CI),
on a real S3-compatible server started on 127.0.0.1 (moto's standalone server: it keeps objects
in memory, so this measures our overhead, not a network).

    .venv/bin/python scripts/bench_remote.py [--mib 256] [--repeats 5]

Rows: a raw `fs.put_file` of a file of the same size (the baseline), ours synchronous
(`DefaultCheckpointer(upload_to=...)`: local durable write, then uploads, record last) first save
and warm saves, and the same with the local write alone (no bucket), each with its ratio.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Trainer:
    def __init__(self, mib: int, step: int) -> None:
        self.state = {"w": torch.full((mib * (1 << 20) // 4,), float(step))}
        self.step = step

    def get_checkpoint_state(self):
        from allennlp.training.trainer import TrainerCheckpoint

        return TrainerCheckpoint(self.state, {"epochs_completed": 0, "batches_in_epoch_completed": self.step})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import s3fs

    from trainer_ckpt import DefaultCheckpointer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        options = {"key": "x", "secret": "x", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "raw.bin")
            with open(raw, "wb") as f:
                f.write(os.urandom(1 << 20) * args.mib)
            times = []
            for i in range(args.repeats):
                start = time.perf_counter()
                fs.put_file(raw, f"bench/raw/{i}.bin")
                times.append(time.perf_counter() - start)
            rows["raw s3fs put_file (baseline)"] = statistics.median(times)
            for name, url in (("ours, local durable write + upload", "s3://bench/ours"), ("ours, local durable write only", None)):
                checkpointer = DefaultCheckpointer(os.path.join(tmp, name.replace(" ", "_")), keep_most_recent_by_count=2,
                                                   upload_to=url, storage_options=options if url else None)
                times = []
                for step in range(1, args.repeats + 2):
                    trainer = Trainer(args.mib, step)
                    start = time.perf_counter()
                    checkpointer.save_checkpoint(trainer)
                    checkpointer.drain()  # the upload runs in the background: timed until it is in the bucket
                    times.append(time.perf_counter() - start)
                checkpointer.close()
                rows[f"{name}: first save"] = times[0]
                rows[f"{name}: warm saves"] = statistics.median(times[1:])
    finally:
        server.terminate()
        server.wait()
    base = rows["raw s3fs put_file (baseline)"]
    mib = args.mib
    print(f"{mib} MiB per checkpoint, median of {args.repeats}; moto's in-memory S3 server on 127.0.0.1")
    print(f"{'':46s} {'seconds':>8s} {'MiB/s':>8s} {'x raw put':>10s}")
    for name, seconds in rows.items():
        print(f"{name:46s} {seconds:8.3f} {mib / seconds:8.1f} {seconds / base:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
