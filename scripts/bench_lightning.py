"""
The Lightning face's saves against Lightning's own CheckpointIO plugins, and against the machine's
own limits, all measured in one run (by hand, not in CI).

    .venv/bin/python scripts/bench_lightning.py [--size-mib 256] [--repeats 5] [--dir /path]

The checkpoint is a realistic Lightning checkpoint dict (what `trainer._checkpoint_connector.
dump_checkpoint` returns for an Adam-trained model: `state_dict`, `optimizer_states` with
`exp_avg`/`exp_avg_sq`, `loops`, `callbacks`, versions; parameters 1/3 of the bytes, optimizer state
2/3), handed straight to each plugin's `save_checkpoint(checkpoint, path)` as Lightning's strategy
does. Rows, each a median of `--repeats` warm saves (a new file each time), and the first save of
a fresh plugin instance on its own row:

- limits: copying the tensors into buffers allocated beforehand (what a background save must do
  on the training thread, at best); a fresh `clone()` of every tensor (what `AsyncCheckpointIO`
  does); a raw sequential write + fsync of the same number of bytes (what a durable save must do).
- synchronous: Lightning's `TorchCheckpointIO` (torch.save into memory, then fsspec's temp file and
  rename, no fsync: the bytes may still be only in the page cache when it returns), the same
  followed by an fsync of the file (durable, as ours), and ours `trainer_ckpt.lightning.CheckpointIO()`
  (temp file, fsync, rename, record).
- background, the time the training thread is blocked in `save_checkpoint`, and the time until the
  save is complete: Lightning's `AsyncCheckpointIO(TorchCheckpointIO())`, ours
  `CheckpointIO(background=True)`. Between two saves the previous one is waited for (untimed):
  blocked time here is the copy, not a wait for a save still in flight.

Ratios are against the limit each row is bounded by (the copy for blocked times, the raw write for
the rest). Keep the machine otherwise quiet; where it is shared, say so next to the figures.
"""
import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO  # noqa: E402

from trainer_ckpt.io import durable  # noqa: E402
from trainer_ckpt.lightning import CheckpointIO  # noqa: E402

MIB = 1 << 20


def make_checkpoint(size_mib: int) -> Dict:
    """A Lightning checkpoint dict of ~size_mib of float32, as `dump_checkpoint` makes it for Adam."""
    per = size_mib * MIB // 4 // 3 // 16
    state_dict = {f"layers.{i}.weight": torch.randn(per) for i in range(16)}
    state = {i: {"step": torch.tensor(100.0), "exp_avg": torch.randn(per), "exp_avg_sq": torch.rand(per)}
             for i in range(16)}
    return {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.6.6",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "dirpath": "/ckpt"}},
        "optimizer_states": [{"state": state, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(16))}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3, "hidden": 512},
    }


def tensors(checkpoint: Dict) -> List[torch.Tensor]:
    out = list(checkpoint["state_dict"].values())
    for s in checkpoint["optimizer_states"][0]["state"].values():
        out += list(s.values())
    return out


class Rows:
    def __init__(self) -> None:
        self.rows: List[Tuple[str, str, float, str]] = []

    def add(self, group: str, name: str, seconds: float, against: str = "") -> None:
        self.rows.append((group, name, seconds, against))
        print(f"  {group:11s} {name:66s} {seconds * 1000:9.1f} ms", flush=True)

    def get(self, name: str) -> float:
        return next(s for _, n, s, _ in self.rows if n == name)


def run(size_mib: int, repeats: int, root: Path) -> None:
    torch.manual_seed(0)
    checkpoint = make_checkpoint(size_mib)
    ts = tensors(checkpoint)
    nbytes = sum(t.numel() * t.element_size() for t in ts)
    print(f"state: {nbytes / MIB:.0f} MiB in {len(ts)} tensors; {repeats} warm repeats; dir {root}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (above 0 on a shared machine: others' work)", flush=True)
    rows = Rows()
    counter = [0]

    def new_path(tag: str) -> Path:
        counter[0] += 1
        return root / tag / f"epoch=3-step={counter[0]}.ckpt"

    def measure(group: str, name: str, fn: Callable[[], None], after: Callable[[], None] = lambda: None,
                first: bool = True) -> None:
        """fn's first call (own row, when `first`) and the median of `repeats` more; `after` untimed."""
        times = []
        for r in range(repeats + 1):
            gc.collect()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            after()
        if first:
            rows.add(group, f"{name}, first save", times[0])
        rows.add(group, f"{name}" + (", warm (median)" if first else " (median)"), statistics.median(times[1:]))

    # ---- limits ----------------------------------------------------------------------------
    buffers = [torch.empty_like(t) for t in ts]
    for b in buffers:
        b.fill_(0)  # touched: the copy below does not count page faults

    def copy_all() -> None:
        for b, t in zip(buffers, ts):
            b.copy_(t)

    measure("limit", "copy into buffers allocated beforehand", copy_all, first=False)
    measure("limit", "clone() of every tensor (fresh memory)", lambda: [t.detach().clone() for t in ts], first=False)
    del buffers
    blob = b"".join(bytes(t.numpy().data) for t in ts[:4])
    blob = blob * max(1, nbytes // len(blob))

    def raw_write() -> None:
        path = new_path("raw")
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(path.parent)

    measure("limit", f"raw write + fsync of {len(blob) / MIB:.0f} MiB", raw_write, first=False)
    del blob
    gc.collect()

    def cleanup(tag: str) -> Callable[[], None]:
        def clean() -> None:
            d = root / tag
            for p in sorted(d.glob("*.ckpt"))[:-1] if d.exists() else []:
                p.unlink()
                rec = d / f".{p.name}.json"
                if rec.exists():
                    rec.unlink()
        return clean

    # ---- synchronous -----------------------------------------------------------------------
    torch_io = TorchCheckpointIO()
    measure("sync", "Lightning TorchCheckpointIO (no fsync)",
            lambda: torch_io.save_checkpoint(checkpoint, new_path("torch")), cleanup("torch"))

    def torch_then_fsync() -> None:
        path = new_path("torchsync")
        torch_io.save_checkpoint(checkpoint, path)
        durable.fsync_dir(str(path))  # opens read-only and fsyncs: a file as well as a directory
        durable.fsync_dir(str(path.parent))

    measure("sync", "Lightning TorchCheckpointIO + fsync of file and dir", torch_then_fsync, cleanup("torchsync"))
    ours = CheckpointIO()
    measure("sync", "ours CheckpointIO() (temp, fsync, rename, record)",
            lambda: ours.save_checkpoint(checkpoint, new_path("ours")), cleanup("ours"))
    ours.teardown()

    # ---- background ------------------------------------------------------------------------
    lightning_async = AsyncCheckpointIO(TorchCheckpointIO())
    ours_bg = CheckpointIO(background=True)

    def drain_lightning() -> None:
        lightning_async.teardown()  # waits for the executor's queue; a new executor at the next save

    for name, io, drain, tag in (("Lightning AsyncCheckpointIO(TorchCheckpointIO())", lightning_async, drain_lightning, "async"),
                                 ("ours CheckpointIO(background=True)", ours_bg, ours_bg.wait, "oursbg")):
        complete: List[float] = []

        def save(io=io, tag=tag) -> None:
            io.save_checkpoint(checkpoint, new_path(tag))

        def until_done(drain=drain, tag=tag) -> None:
            t = time.perf_counter()
            drain()
            complete.append(time.perf_counter() - t)
            cleanup(tag)()

        measure("background", f"{name}: blocked", save, until_done)
        blocked = [s for g, n, s, _ in rows.rows[-2:]]
        rows.add("background", f"{name}: until complete, first save", blocked[0] + complete[0])
        rows.add("background", f"{name}: until complete, warm (median)",
                 blocked[1] + statistics.median(complete[1:]))  # blocked median + wait median: approximate
    ours_bg.teardown()

    # ---- table -----------------------------------------------------------------------------
    copy = rows.get("copy into buffers allocated beforehand (median)")
    write = next(s for _, n, s, _ in rows.rows if n.startswith("raw write"))
    print()
    print(f"| | {nbytes / MIB:.0f} MiB | ratio |")
    print("|---|---:|---|")
    for group, name, seconds, _ in rows.rows:
        if group == "limit":
            ratio = ""
        elif name.endswith(": blocked, first save") or ": blocked, warm" in name:
            ratio = f"{seconds / copy:.2f}x the copy"
        else:
            ratio = f"{seconds / write:.2f}x the raw write"
        print(f"| {group}: {name} | {seconds * 1000:.0f} ms | {ratio} |")
    ours_sync = rows.get("ours CheckpointIO() (temp, fsync, rename, record), warm (median)")
    torch_sync = rows.get("Lightning TorchCheckpointIO + fsync of file and dir, warm (median)")
    torch_plain = rows.get("Lightning TorchCheckpointIO (no fsync), warm (median)")
    ours_bl = rows.get("ours CheckpointIO(background=True): blocked, warm (median)")
    l_bl = rows.get("Lightning AsyncCheckpointIO(TorchCheckpointIO()): blocked, warm (median)")
    print()
    print(f"warm sync: ours / Lightning's (no fsync) = {ours_sync / torch_plain:.2f}; "
          f"ours / Lightning's + fsync = {ours_sync / torch_sync:.2f}")
    print(f"warm blocked: ours / Lightning's AsyncCheckpointIO = {ours_bl / l_bl:.2f}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="checkpoint size (parameters + Adam state)")
    parser.add_argument("--repeats", type=int, default=5, help="warm saves per row (median)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_lightning_", dir=args.dir))
    try:
        run(args.size_mib, args.repeats, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
