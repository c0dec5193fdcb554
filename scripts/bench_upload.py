"""
Step time of a small training loop that saves a checkpoint every few steps into a bucket (moto's S3
server on 127.0.0.1, started here), with uploads in the background (`stores.Mirrored`, as faces
build it) against uploads on the training thread (the same save, then `Engine.drain()`: what the
loop waited for before uploads moved off it), each on a plain link and on a throttled one (a TCP
proxy on 127.0.0.1 in front of moto, at most --throttle-mib-s per connection and direction).

Rows: the first saving step, the warm saving steps, and the steps between saves, each as the
mean step time in milliseconds and as a ratio against the loop without checkpoints, measured in
the same run. Each configuration ends with `close()`, which waits for what is still uploading
(its seconds in the last column, not in the step times).

    .venv/bin/python scripts/bench_upload.py [--state-mib 16] [--throttle-mib-s 40] [--saves 5] [--every 40]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainer_ckpt import stores  # noqa: E402
from trainer_ckpt.checkpoint_info import CheckpointInfo  # noqa: E402
from trainer_ckpt.core.engine import Engine  # noqa: E402
from trainer_ckpt.retention_policies import KeepMostRecentByCount  # noqa: E402
from trainer_ckpt.stores.mirrored import Mirrored  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> "tuple[subprocess.Popen, int]":
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("moto's server did not start")
            time.sleep(0.2)


class Throttle:
    """A TCP proxy on 127.0.0.1 to `target`: each connection forwards at most `rate` bytes/s each way."""

    def __init__(self, target: int, rate: float) -> None:
        self.target, self.rate = target, rate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._forward, args=(source, sink), daemon=True).start()

    def _forward(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                chunk = source.recv(1 << 16)
                if not chunk:
                    break
                sink.sendall(chunk)
                time.sleep(len(chunk) / self.rate)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def model_of(state_mib: int) -> torch.nn.Module:
    """An MLP whose parameters take about `state_mib` MiB (the SGD momentum doubles the checkpoint)."""
    width = int((state_mib * 2**20 / 4 / 4) ** 0.5)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)])


def loop(model, optimizer, steps: int, every: int, engine=None, foreground: bool = False) -> "tuple[list, list]":
    """(step times of saving steps, of the others), in seconds."""
    width = model[0].in_features
    saving, between = [], []
    keep = (KeepMostRecentByCount(2), lambda entry: True)
    for step in range(1, steps + 1):
        start = time.perf_counter()
        x = torch.randn(64, width)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if engine is not None and step % every == 0:
            state = {stores.MODEL: model.state_dict(), stores.TRAINING: {"optimizer": optimizer.state_dict(), "step": step}}
            engine.save((0, step), state, CheckpointInfo(0, step, time=time.time()), retention=keep)
            if foreground:
                engine.drain()
            saving.append(time.perf_counter() - start)
        else:
            between.append(time.perf_counter() - start)
    return saving, between


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-mib", type=int, default=16, help="parameters' size; the checkpoint is about twice it")
    parser.add_argument("--throttle-mib-s", type=float, default=40.0)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--every", type=int, default=40, help="steps between saves")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    server, port = start_moto()
    throttle = Throttle(port, args.throttle_mib_s * 2**20)
    model = model_of(args.state_mib)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    steps = args.saves * args.every
    try:
        loop(model, optimizer, args.every, args.every)  # warm-up
        _, base = loop(model, optimizer, steps, args.every)
        baseline = statistics.mean(base)
        rows = [("no checkpoints (baseline)", None, None, base, None)]
        import s3fs

        for link, link_port in (("plain", port), (f"throttled {args.throttle_mib_s:g} MiB/s", throttle.port)):
            options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{link_port}"}}
            bucket = f"bench{link_port}"
            s3fs.S3FileSystem(**options).mkdir(bucket)
            for mode, foreground in (("uploads on the training thread", True), ("background uploads", False)):
                with tempfile.TemporaryDirectory() as local:
                    engine = Engine(Mirrored(stores.Pairs(local), f"s3://{bucket}/{mode[:10].replace(' ', '_')}", options))
                    saving, between = loop(model, optimizer, steps, args.every, engine, foreground)
                    start = time.perf_counter()
                    engine.close()
                    rows.append((f"{link}, {mode}", saving[0], saving[1:], between, time.perf_counter() - start))
    finally:
        server.terminate()
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 2 / 2**20
    print(f"checkpoint about {size:.0f} MiB, a save every {args.every} steps, {args.saves} saves; step times in ms "
          f"(x the baseline's mean step, {baseline * 1e3:.1f} ms)\n")
    print("| configuration | first save | warm saves | steps between saves | close() waits, s |")
    print("|---|---|---|---|---|")
    for name, first, warm, others, close in rows:
        cells = [f"{t * 1e3:.0f} ({t / baseline:.1f}x)" if t is not None else "" for t in
                 (first, statistics.mean(warm) if warm else None, statistics.mean(others))]
        print(f"| {name} | {' | '.join(cells)} | {'' if close is None else f'{close:.2f}'} |")


if __name__ == "__main__":
    main()
