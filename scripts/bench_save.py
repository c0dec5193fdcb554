"""
Save and load speed against the machine's own limits, measured in one run (by hand, not in CI).

    .venv/bin/python scripts/bench_save.py [--sizes-mib 64 512 2048] [--repeats 5] [--dir /path]

For each state size (model parameters + Adam-like optimizer state, 1:2), one table of medians:
the limits (raw sequential write + fsync of the same bytes; copying the tensors into allocated
buffers; a fresh clone; a raw cold read), AllenNLP's default checkpointer (its own save, and
until durable), ours synchronous (durable; direct I/O where the file system has it, and buffered
for comparison), a fresh process's first save after loading (what every `--recover` does), ours in the background (time the training loop is
blocked, and time until committed), cold loads, each with its ratio to the limit it is bounded
by. Then the per-call cost of `maybe_save_checkpoint` when it does not save, and retention +
finding the latest with 10,000 checkpoints on disk. The first save of a process is reported on
its own (page faults, allocator). Keep the machine otherwise quiet.
"""
import argparse
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer  # noqa: E402
from allennlp.training.trainer import TrainerCheckpoint  # noqa: E402

from trainer_ckpt import DefaultCheckpointer# noqa: E402
from trainer_ckpt.io import fastio  # noqa: E402
from trainer_ckpt.stores import CheckpointDir, record# noqa: E402
from trainer_ckpt.io import durable

MIB = 1 << 20


class Trainer:
    def __init__(self, model: Dict, training: Dict) -> None:
        self.model, self.training = model, training

    def get_checkpoint_state(self) -> TrainerCheckpoint:
        return TrainerCheckpoint(self.model, self.training)


def make_state(size_mib: int, epoch: int = 1, device: str = "cpu"):
    """~size_mib of float32: parameters (1/3) in 16 tensors, Adam's exp_avg and exp_avg_sq (2/3)."""
    per = size_mib * MIB // 4 // 3 // 16
    model = {f"layer{i}.weight": torch.randn(per, device=device) for i in range(16)}
    state = {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn(per, device=device),
                 "exp_avg_sq": torch.rand(per, device=device)} for i in range(16)}
    training = {"epochs_completed": epoch, "batches_in_epoch_completed": 0,
                "optimizer": {"state": state, "param_groups": [{"lr": 1e-3, "params": list(range(16))}]}}
    return model, training


def tensors(state) -> List[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors(v)]
    return []


def evict(path: Path) -> None:
    """Drops a file's pages from the page cache, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn: Callable[[], None], repeats: int, before: Callable[[], None] = lambda: None) -> List[float]:
    times = []
    for _ in range(repeats):
        before()
        durable.wait_for_discards()  # the previous checkpoint's unlink: done while training, between saves
        os.sync()  # no dirty pages of an earlier step flushing while this one is timed
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def shuffled(rounds: list) -> list:
    """One round of the compared runs in a random order (seeded): none always follows the same one."""
    order = list(rounds)
    _ORDER.shuffle(order)
    return order


_ORDER = random.Random(0)


def fsync_files(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fd = os.open(os.path.dirname(paths[0]), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def bench_size(size_mib: int, repeats: int, root: Path) -> List[tuple]:
    model, training = make_state(size_mib)
    flat = tensors(model) + tensors(training)
    nbytes = sum(t.numel() * t.element_size() for t in flat)
    rows = []

    # Limits.
    raw = root / "raw.bin"
    blob = bytearray(nbytes)

    def raw_write():
        with open(raw, "wb") as f:
            view = memoryview(blob)
            for i in range(0, nbytes, 64 * MIB):
                f.write(view[i:i + 64 * MIB])
            f.flush()
            os.fsync(f.fileno())

    t_write = statistics.median(timed(raw_write, repeats))
    buffers = [torch.empty_like(t) for t in flat]

    def copy_all():
        for b, t in zip(buffers, flat):
            b.copy_(t)

    t_copy = statistics.median(timed(copy_all, repeats))
    t_clone = statistics.median(timed(lambda: [t.clone() for t in flat], repeats))

    def raw_read():  # one sequential stream into a reused buffer (what `cat` does)
        buffer = bytearray(16 * MIB)
        with open(raw, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass

    t_read = statistics.median(timed(raw_read, repeats, before=lambda: evict(raw)))
    rows += [("raw write + fsync", t_write, nbytes / t_write, 1.0, "limit"),
             ("copy into allocated buffers", t_copy, nbytes / t_copy, 1.0, "limit"),
             ("fresh clone", t_clone, nbytes / t_clone, t_copy / t_clone, "copy"),
             ("raw cold read", t_read, nbytes / t_read, 1.0, "limit")]

    # AllenNLP's default checkpointer: its save, and until the bytes are durable.
    allennlp_dir = root / "allennlp"
    allennlp_dir.mkdir()
    counter = [0]

    def allennlp_save(durable: bool):
        counter[0] += 1
        checkpointer = AllenNlpCheckpointer(str(allennlp_dir), keep_most_recent_by_count=1)
        training["epochs_completed"] = counter[0]
        checkpointer.save_checkpoint(Trainer(model, training))
        if durable:
            fsync_files([str(p) for p in allennlp_dir.glob(f"*_e{counter[0]}_b0.th")])

    t_allennlp = statistics.median(timed(lambda: allennlp_save(False), repeats))
    t_allennlp_durable = statistics.median(timed(lambda: allennlp_save(True), repeats))
    rows += [("AllenNLP save (not durable)", t_allennlp, nbytes / t_allennlp, t_write / t_allennlp, "write"),
             ("AllenNLP save + fsync", t_allennlp_durable, nbytes / t_allennlp_durable, t_write / t_allennlp_durable, "write")]

    # Ours, synchronous (durable: fsync + rename + directory fsync + record), with direct I/O (where
    # the file system has it), and through the page cache for comparison. This VM's disk swings
    # from run to run (and after large deletions): the raw write is measured again in between, each
    # round raw / direct / buffered in a shuffled order, and these rows are ratios to that raw write.
    ours_dir = root / "ours"
    ours = DefaultCheckpointer(ours_dir, keep_most_recent_by_count=1)
    buffered_dir = root / "buffered"
    buffered_dir.mkdir()
    fastio._DIRECT[os.path.abspath(buffered_dir)] = False
    buffered = DefaultCheckpointer(buffered_dir, keep_most_recent_by_count=1)

    def saver(checkpointer):
        def save():
            counter[0] += 1
            training["epochs_completed"] = counter[0]
            checkpointer.save_checkpoint(Trainer(model, training))
        return save

    first = timed(saver(ours), 1)[0]
    b_first = timed(saver(buffered), 1)[0]
    raws, directs, buffereds = [], [], []
    rounds = [(raws, raw_write), (directs, saver(ours)), (buffereds, saver(buffered))]
    for _ in range(repeats):
        for times, fn in shuffled(rounds):
            times += timed(fn, 1)
    raw.unlink()
    t_raw2, t_ours, t_buffered = (statistics.median(x) for x in (raws, directs, buffereds))
    rows += [("raw write + fsync, interleaved", t_raw2, nbytes / t_raw2, 1.0, "limit"),
             ("ours sync, first save", first, nbytes / first, t_raw2 / first, "write"),
             ("ours sync (durable)", t_ours, nbytes / t_ours, t_raw2 / t_ours, "write"),
             ("ours sync buffered, first save", b_first, nbytes / b_first, t_raw2 / b_first, "write"),
             ("ours sync buffered", t_buffered, nbytes / t_buffered, t_raw2 / t_buffered, "write")]
    ours.close()
    buffered.close()
    shutil.rmtree(buffered_dir, ignore_errors=True)

    # What every --recover does: a fresh process builds a checkpointer, loads the newest
    # checkpoint, and saves (timed: the save alone, the first of that process).
    recover = subprocess.run([sys.executable, __file__, "--recover-child", str(ours_dir), str(size_mib)],
                             capture_output=True, text=True)
    t_recover = float(recover.stdout.strip().splitlines()[-1]) if recover.returncode == 0 else float("nan")
    if recover.returncode:
        print(recover.stderr[-2000:], file=sys.stderr)
    rows.append(("fresh process: recover, then save", t_recover, nbytes / t_recover, t_raw2 / t_recover, "write"))

    # Ours, background: how long the loop is blocked, and until committed.
    # The copy is measured again before each save (memory bandwidth swings too on this VM).
    bg = DefaultCheckpointer(root / "bg", keep_most_recent_by_count=1, background=True)
    blocked, committed, copies = [], [], []
    for i in range(repeats + 1):
        counter[0] += 1
        training["epochs_completed"] = counter[0]
        copies += timed(copy_all, 1)
        durable.wait_for_discards()
        os.sync()
        gc.collect()
        start = time.perf_counter()
        bg.save_checkpoint(Trainer(model, training))
        blocked.append(time.perf_counter() - start)
        bg.wait()
        committed.append(time.perf_counter() - start)
    t_blocked, t_committed = statistics.median(blocked[1:]), statistics.median(committed[1:])
    # A fresh checkpointer's first background save after a call that did not save (that call
    # allocated the snapshot buffers, on the worker thread): what a training loop sees. One fresh
    # checkpointer per repeat, each save after a copy of its own (the limit, interleaved).
    readies = []
    for i in range(repeats):
        ready = DefaultCheckpointer(root / f"ready{i}", keep_most_recent_by_count=1, background=True,
                                    save_every_num_batches=2, save_completed_epochs=False)
        counter[0] += 1
        training.update(epochs_completed=counter[0], batches_in_epoch_completed=1)
        ready.maybe_save_checkpoint(Trainer(model, training), counter[0], 1)
        ready.wait()
        training["batches_in_epoch_completed"] = 2
        copies += timed(copy_all, 1)
        durable.wait_for_discards()
        os.sync()
        gc.collect()
        start = time.perf_counter()
        ready.maybe_save_checkpoint(Trainer(model, training), counter[0], 2)
        readies.append(time.perf_counter() - start)
        ready.close()
        shutil.rmtree(root / f"ready{i}", ignore_errors=True)
    t_ready = statistics.median(readies)
    t_copy = statistics.median(copies[1:])
    buffers.clear()
    training["batches_in_epoch_completed"] = 0
    # The nearest peer: torch.distributed.checkpoint.async_save (stages to CPU, writes in a thread).
    import torch.distributed.checkpoint as dcp

    dcp_blocked, dcp_done = [], []
    for i in range(repeats + 1):
        os.sync()
        gc.collect()
        start = time.perf_counter()
        future = dcp.async_save({"model": model, "training": training}, checkpoint_id=str(root / f"dcp{i}"))
        dcp_blocked.append(time.perf_counter() - start)
        future.result()
        dcp_done.append(time.perf_counter() - start)
        shutil.rmtree(root / f"dcp{i}", ignore_errors=True)
    d_blocked, d_done = statistics.median(dcp_blocked[1:]), statistics.median(dcp_done[1:])
    rows += [("dcp.async_save: loop blocked", d_blocked, nbytes / d_blocked, t_copy / d_blocked, "copy"),
             ("dcp.async_save: until done", d_done, nbytes / d_done, t_write / d_done, "write")]
    rows += [("copy into allocated buffers, interleaved", t_copy, nbytes / t_copy, 1.0, "limit"),
             ("ours background, first (blocked)", blocked[0], nbytes / blocked[0], t_copy / blocked[0], "copy"),
             ("ours background, first after a call that did not save (blocked)", t_ready, nbytes / t_ready, t_copy / t_ready, "copy"),
             ("ours background: loop blocked", t_blocked, nbytes / t_blocked, t_copy / t_blocked, "copy"),
             ("ours background: until committed", t_committed, nbytes / t_committed, t_write / t_committed, "write")]
    bg.close()

    # Cold loads, interleaved (shuffled rounds) with the raw read of the same number of bytes (the disk swings).
    reader = DefaultCheckpointer(ours_dir, read_only=True)
    newest = list(ours_dir.glob("*_state_e*_b0.th"))
    allennlp_reader = AllenNlpCheckpointer(str(allennlp_dir))
    files = list(allennlp_dir.glob("*.th"))
    with open(raw, "wb") as f:
        f.write(blob)
    reads, loads, allennlp_loads = [], [], []
    rounds = [(reads, raw_read, [raw]), (loads, reader.load_checkpoint, newest),
              (allennlp_loads, allennlp_reader.load_checkpoint, files)]
    for _ in range(repeats):
        for times, fn, paths in shuffled(rounds):
            times += timed(fn, 1, before=lambda: [evict(p) for p in paths])
    raw.unlink()
    for name, times in (("raw cold read", reads), ("ours cold load", loads), ("AllenNLP cold load", allennlp_loads)):
        print(f"  ({name}, each round: {' '.join(f'{t:.3f}' for t in times)})")
    t_read2, t_load, t_allennlp_load = (statistics.median(x) for x in (reads, loads, allennlp_loads))
    rows += [("raw cold read, interleaved", t_read2, nbytes / t_read2, 1.0, "limit"),
             ("ours cold load (verified)", t_load, nbytes / t_load, t_read2 / t_load, "read"),
             ("AllenNLP cold load", t_allennlp_load, nbytes / t_allennlp_load, t_read2 / t_allennlp_load, "read")]
    for d in ("allennlp", "ours", "bg"):
        shutil.rmtree(root / d, ignore_errors=True)
    return rows


def bench_device(size_mib: int, repeats: int, root: Path, device: str = "cuda") -> List[tuple]:
    """
    State on the GPU: the raw device-to-host copy into pinned memory (the limit of the time the loop
    is blocked), AllenNLP's default checkpointer, ours synchronous (staged through reused pinned
    buffers) and in the background, each first save on its own row, and dcp.async_save.
    """
    model, training = make_state(size_mib, device=device)
    flat = tensors(model) + tensors(training)
    nbytes = sum(t.numel() * t.element_size() for t in flat)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed_device(fn: Callable[[], None], n: int) -> List[float]:
        return timed(lambda: (fn(), sync()), n, before=sync)

    start = time.perf_counter()
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=cuda) for t in flat]
    t_pin = time.perf_counter() - start
    t_d2h = statistics.median(timed_device(lambda: [b.copy_(t, non_blocking=cuda) for b, t in zip(pinned, flat)], repeats))
    t_pageable = statistics.median(timed_device(lambda: [t.to("cpu", copy=True) for t in flat], repeats))
    del pinned
    rows = [("raw D2H copy into pinned buffers", t_d2h, nbytes / t_d2h, 1.0, "limit"),
            ("allocating those pinned buffers", t_pin, nbytes / t_pin, t_d2h / t_pin, "D2H"),
            ("D2H copy into new pageable memory", t_pageable, nbytes / t_pageable, t_d2h / t_pageable, "D2H")]
    blob = bytearray(nbytes)
    raw = root / "raw.bin"

    def raw_write():
        with open(raw, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    t_write = statistics.median(timed(raw_write, repeats))
    raw.unlink()
    rows.append(("raw write + fsync", t_write, nbytes / t_write, 1.0, "limit"))
    counter = [0]

    def step(checkpointer, batch: int = 0):
        counter[0] += 1
        training.update(epochs_completed=counter[0], batches_in_epoch_completed=batch)
        if batch:
            return lambda: checkpointer.maybe_save_checkpoint(Trainer(model, training), counter[0], batch)
        return lambda: checkpointer.save_checkpoint(Trainer(model, training))

    (root / "allennlp").mkdir()
    allennlp = AllenNlpCheckpointer(str(root / "allennlp"), keep_most_recent_by_count=1)
    t_allennlp = statistics.median(timed_device(lambda: step(allennlp)(), repeats))
    rows.append(("AllenNLP save (not durable)", t_allennlp, nbytes / t_allennlp, t_write / t_allennlp, "write"))
    for background in (False, True):
        kind = "background (blocked)" if background else "sync (durable)"
        fresh = DefaultCheckpointer(root / f"fresh{background}", keep_most_recent_by_count=1, background=background)
        first = timed_device(step(fresh), 1)[0]  # no call before it: allocates its pinned buffers
        fresh.close()
        # A first save after a call that did not save (that call allocated the buffers, off the loop).
        ready = DefaultCheckpointer(root / f"ready{background}", keep_most_recent_by_count=1, background=background,
                                    save_every_num_batches=2, save_completed_epochs=False)
        step(ready, 1)()
        ready.wait()
        times = timed_device(step(ready, 2), 1)
        ready.wait()
        for _ in range(repeats):
            times += timed_device(step(ready, 2), 1)
            ready.wait()
        ready.close()
        limit, name = (t_d2h, "D2H") if background else (t_write, "write")
        warm = statistics.median(times[1:])
        rows += [(f"ours {kind}, first save of a process", first, nbytes / first, limit / first, name),
                 (f"ours {kind}, first after a call that did not save", times[0], nbytes / times[0], limit / times[0], name),
                 (f"ours {kind}, warm", warm, nbytes / warm, limit / warm, name)]
    import torch.distributed.checkpoint as dcp

    blocked = []
    for i in range(repeats + 1):
        sync()
        start = time.perf_counter()
        future = dcp.async_save({"model": model, "training": training}, checkpoint_id=str(root / f"dcp{i}"))
        blocked.append(time.perf_counter() - start)
        future.result()
        shutil.rmtree(root / f"dcp{i}", ignore_errors=True)
    rows += [("dcp.async_save, first (blocked)", blocked[0], nbytes / blocked[0], t_d2h / blocked[0], "D2H"),
             ("dcp.async_save, warm (blocked)", statistics.median(blocked[1:]), nbytes / statistics.median(blocked[1:]),
              t_d2h / statistics.median(blocked[1:]), "D2H")]
    shutil.rmtree(root / "allennlp", ignore_errors=True)
    return rows


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_child(size_mib: int, directory: str, background: bool, out) -> None:
    model, training = make_state(size_mib)
    nbytes = sum(t.numel() * t.element_size() for t in tensors(model) + tensors(training))
    checkpointer = DefaultCheckpointer(directory, background=background)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = _status_kib("VmRSS")
    checkpointer.save_checkpoint(Trainer(model, training))
    checkpointer.wait()
    out.send((_status_kib("VmHWM") - before) * 1024 / nbytes)


def bench_peak_memory(size_mib: int, root: Path, background: bool) -> float:
    """Extra peak memory of one save, as a fraction of the state's size (in a fresh process)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_peak_child, args=(size_mib, str(root / f"peak{int(background)}"), background, send))
    child.start()
    extra = receive.recv()
    child.join()
    return extra


def bench_hot_path(root: Path, calls: int = 100_000) -> float:
    checkpointer = DefaultCheckpointer(root / "hot", save_every_num_batches=10**9, save_completed_epochs=False)
    trainer = Trainer({}, {})
    start = time.perf_counter()
    for b in range(1, calls + 1):
        checkpointer.maybe_save_checkpoint(trainer, 0, b)
    return (time.perf_counter() - start) / calls


def bench_history(root: Path, n: int = 10_000) -> Dict[str, float]:
    directory = root / "history"
    layout = CheckpointDir(str(directory))
    directory.mkdir()
    for i in range(n):
        progress = (i // 100, i % 100 + 1)
        for kind in ("model_state", "training_state"):
            (directory / layout.name(kind, progress)).write_bytes(b"x")
        rec = record(progress, 1e9 + i, {}, i, False)
        rec["files"] = {k: {"name": layout.name(k, progress), "size": 1, "crc32": zlib.crc32(b"x")}
                        for k in ("model_state", "training_state")}
        (directory / layout.name("checkpoint", progress)).write_text(__import__("json").dumps(rec))
    checkpointer = DefaultCheckpointer(directory, keep_most_recent_by_count=None)
    tiny = Trainer({"w": torch.zeros(1)}, {"epochs_completed": 1000, "batches_in_epoch_completed": 0})
    start = time.perf_counter()
    checkpointer._engine.retain(checkpointer._retention_policy)  # the first save of a process lists the directory once
    first = time.perf_counter() - start
    checkpointer.save_checkpoint(tiny)
    start = time.perf_counter()
    checkpointer._engine.retain(checkpointer._retention_policy)  # what every later save adds: retention over 10,001
    again = time.perf_counter() - start
    start = time.perf_counter()
    checkpointer.find_latest_checkpoint()  # what the trainer calls right after a save
    latest = time.perf_counter() - start
    start = time.perf_counter()
    DefaultCheckpointer(directory, read_only=True).find_latest_checkpoint()  # a fresh process
    fresh = time.perf_counter() - start
    shutil.rmtree(directory)
    return {"retention, first save of a process (lists, reads 10,000 records)": first,
            "retention, every later save": again, "find latest after a save": latest,
            "find latest in a fresh process (lists, verifies the newest)": fresh}


def recover_child(directory: str, size_mib: int) -> None:
    """
    A fresh process: the checkpointer of a --recover, its load into the live state (as
    `load_state_dict` copies it), then its first save (printed, seconds).
    """
    model, training = make_state(size_mib)
    checkpointer = DefaultCheckpointer(directory, keep_most_recent_by_count=1)
    loaded = checkpointer.load_checkpoint()
    for live, saved in zip(tensors(model) + tensors(training), tensors(loaded[0]) + tensors(loaded[1])):
        live.copy_(saved)
    training["epochs_completed"] = loaded[1]["epochs_completed"] + 1000
    os.sync()
    gc.collect()
    start = time.perf_counter()
    checkpointer.save_checkpoint(Trainer(model, training))
    print(time.perf_counter() - start)


def main() -> int:
    if sys.argv[1:2] == ["--recover-child"]:
        recover_child(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--device", default="cpu", help="cuda: the state on the GPU (pinned staging), instead of the CPU rows")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_save_", dir=args.dir))
    try:
        for size in args.sizes_mib:
            print(f"\nstate {size} MiB on {args.device} ({root})")
            print(f"  {'':36s} {'seconds':>9s} {'GB/s':>7s}  ratio to its limit")
            rows = bench_size(size, args.repeats, root) if args.device == "cpu" else bench_device(size, args.repeats, root, args.device)
            for name, seconds, rate, ratio, limit in rows:
                print(f"  {name:36s} {seconds:9.4f} {rate / 1e9:7.2f}  {ratio:5.2f} x {limit}")
        if args.device != "cpu":
            return 0
        for background in (False, True):
            extra = bench_peak_memory(args.sizes_mib[-1], root, background)
            print(f"extra peak memory of one {'background' if background else 'synchronous'} save of "
                  f"{args.sizes_mib[-1]} MiB: {extra:.2f} x the state size")
        print(f"\nmaybe_save_checkpoint when not saving: {bench_hot_path(root) * 1e6:.2f} us per call")
        for name, seconds in bench_history(root).items():
            print(f"10,000 checkpoints on disk, {name}: {seconds * 1e3:.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
