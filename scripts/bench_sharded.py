"""
Sharded saves (FSDP2 state through DCP) against DCP's own, measured in one run (by hand, not in CI).

    .venv/bin/python scripts/bench_sharded.py [--layers 16] [--width 2048] [--rounds 3] [--dir /path]

Two gloo processes on the CPU, each holding half of a real FSDP2 (`fully_shard`) model of
`--layers` x Linear(width, width) and its Adam state (16 x 2048: 384 MiB per rank). Every round
times, on each rank, with the ranks aligned before each row (the slower rank's time is the
row's; medians over `--rounds`):

- a raw copy of the rank's local shards into CPU tensors allocated beforehand (what a background
  save must do on the training thread, at best);
- `dcp.save` (synchronous, fsynced files);
- `dcp.async_save` (on a gloo group of its own, as torch advises): the time it blocks the caller,
  and until its future is done (committed);
- ours synchronous (`Engine.save`: DCP into a temp directory, per-rank CRC32s, rename, record);
- ours with `background=True`: blocked, and until committed (`Engine.wait()`); the first save of
  the engine on its own row, warm saves after.

Ratios: blocked times against the raw copy, totals against `dcp.save`. Targets (issue 29): ours
warm blocked <= 1.2x the copy, first <= 2x; ours blocked below `async_save`'s; ours committed
within 1.2x of `dcp.save`. Keep the machine otherwise quiet.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rank_main(rank: int, store: str, directory: str, layers: int, width: int, rounds: int, out: str) -> None:
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    from trainer_ckpt.checkpoint_info import CheckpointInfo
    from trainer_ckpt.core.engine import Engine
    from trainer_ckpt.stores.named import FVCORE, MAIN, NamedFiles

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, width)).sum().backward()
    optimizer.step()

    def state():
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    locals_ = [t.to_local() if hasattr(t, "to_local") else t for part in state().values() for t in _tensors(part)]
    buffers = [torch.empty_like(t) for t in locals_]
    rows = {name: [] for name in ("copy", "dcp.save", "dcp.async_save blocked", "dcp.async_save committed",
                                  "ours sync", "ours background first blocked", "ours background first committed",
                                  "ours background warm blocked", "ours background warm committed")}

    def timed(name, fn):
        dist.barrier()
        start = time.perf_counter()
        result = fn()
        seconds = [0.0, 0.0]
        dist.all_gather_object(seconds, time.perf_counter() - start)
        rows[name].append(max(seconds))
        return result

    def clear(path):
        dist.barrier()
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
        dist.barrier()

    async_group = dist.new_group(backend="gloo")  # its worker's collectives on a group of their own, as torch advises
    for r in range(rounds):
        timed("copy", lambda: [b.copy_(t) for b, t in zip(buffers, locals_)])
        target = os.path.join(directory, "dcp")
        clear(target)
        timed("dcp.save", lambda: dcp.save(state(), checkpoint_id=os.path.join(target, "a")))
        clear(target)
        future = timed("dcp.async_save blocked", lambda: dcp.async_save(state(), checkpoint_id=os.path.join(target, "b"),
                                                                        process_group=async_group))
        rows["dcp.async_save committed"].append(rows["dcp.async_save blocked"][-1] + _waited(future.result))
        ours = os.path.join(directory, f"ours{r}")
        clear(ours)
        engine = Engine(NamedFiles(ours, FVCORE), primary=rank == 0)
        timed("ours sync", lambda: engine.save("model_0000000", {MAIN: state()}, CheckpointInfo(0, 0, time=0.0)))
        engine.close()
        clear(ours)
        engine = Engine(NamedFiles(ours, FVCORE), background=True, primary=rank == 0)
        for i, kind in enumerate(("first", "warm", "warm")):
            name = f"ours background {kind}"
            timed(f"{name} blocked", lambda: engine.save(f"model_{i:07d}", {MAIN: state()}, CheckpointInfo(0, i, time=float(i))))
            dist.barrier()
            start = time.perf_counter()
            engine.wait()
            seconds = [0.0, 0.0]
            dist.all_gather_object(seconds, time.perf_counter() - start)
            rows[f"{name} committed"].append(rows[f"{name} blocked"][-1] + max(seconds))
        engine.close()
        clear(ours)
    if rank == 0:
        with open(out, "w") as f:
            for name, values in rows.items():
                f.write(f"{name}\t{statistics.median(values)}\n")
    dist.destroy_process_group()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _waited(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="a directory on the disk to measure (default: a temp directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = os.path.join(tmp, "rows.tsv")
        mp.spawn(rank_main, args=(os.path.join(tmp, "store"), tmp, args.layers, args.width, args.rounds, out), nprocs=2)
        rows = {k: float(v) for k, v in (line.rstrip("\n").split("\t") for line in open(out))}
    per_rank = args.layers * args.width * args.width * 4 * 3 / 2 / 2**20
    print(f"2 gloo ranks, FSDP2 on the CPU, {args.layers} x Linear({args.width}, {args.width}) + Adam: "
          f"{per_rank:.0f} MiB per rank; medians of {args.rounds} rounds, the slower rank")
    print(f"{'':40s} {'seconds':>9s} {'x copy':>8s} {'x dcp.save':>11s}")
    for name, seconds in rows.items():
        print(f"{name:40s} {seconds:9.3f} {seconds / rows['copy']:8.2f} {seconds / rows['dcp.save']:11.2f}")


if __name__ == "__main__":
    main()
