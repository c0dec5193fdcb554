"""
Host memory of each save mode, and the time each blocks the training thread, measured in one run
(by hand, not in CI).

    .venv/bin/python scripts/bench_memory.py [--size-mib 256] [--saves 4] [--dir /path]

Each mode runs in a fresh process (peak RSS is a process's lifetime high-water mark): it builds a
CPU state of `--size-mib` MiB (a model's parameters and Adam's two moments), notes its RSS, then
saves `--saves` checkpoints through the engine, changing the state between saves as training
would. Rows: the first save and the warm saves (median) apart; `extra` is the peak RSS above the
RSS before the first save, as a fraction of the state's size; `blocked` is the time the save call
held the training thread, as a ratio to the baseline: a plain `torch.save` of the same state to
the same disk (no fsync), measured in the same run.

Modes: synchronous (`background=False`); background (`background=True`: the snapshot buffers
hold a full copy, kept between saves); background with `max_host_memory` at a quarter of the state
(larger than the bound: saved on the training thread from the live tensors, no buffers). Page
cache is not counted (it is not RSS). Keep the machine otherwise quiet; say so next to the figures
when it is shared.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODE = """
import json, os, resource, sys, time, torch
sys.path.insert(0, {root!r})
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.stores.named import FVCORE, MAIN, NamedFiles

mode, directory, size_mib, saves = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
n = size_mib * 2**20 // 4 // 3 // 8
state = {{"model": {{f"w{{i}}": torch.randn(n) for i in range(8)}},
          "optimizer": {{f"m{{i}}": torch.randn(2 * n) for i in range(8)}}}}
state_bytes = sum(t.numel() * 4 for part in state.values() for t in part.values())

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if mode == "torch.save":
    before, blocked = rss(), []
    for i in range(saves):
        start = time.perf_counter()
        torch.save(state, os.path.join(directory, f"plain_{{i}}.pt"))
        blocked.append(time.perf_counter() - start)
        state["model"]["w0"] += 1
else:
    bound = {{"sync": None, "background": None, "bounded": state_bytes // 4}}[mode]
    engine = Engine(NamedFiles(directory, FVCORE), background=mode != "sync", max_host_memory=bound)
    before, blocked = rss(), []
    for i in range(saves):
        start = time.perf_counter()
        engine.save(f"model_{{i:07d}}", {{MAIN: state}}, CheckpointInfo(0, i, time=float(i)))
        blocked.append(time.perf_counter() - start)
        engine.wait()  # the next save would wait for it anyway: not timed
        state["model"]["w0"] += 1
    engine.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"state": state_bytes, "extra": peak - before, "blocked": blocked}}))
"""


def run_mode(mode: str, directory: str, size_mib: int, saves: int) -> dict:
    os.makedirs(directory)
    out = subprocess.run([sys.executable, "-c", MODE.format(root=ROOT), mode, directory, str(size_mib), str(saves)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--dir", default=None, help="a directory on the disk to measure (default: a temp directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        results = {mode: run_mode(mode, os.path.join(root, mode), args.size_mib, args.saves)
                   for mode in ("torch.save", "sync", "background", "bounded")}
    base = results["torch.save"]
    first_base, warm_base = base["blocked"][0], statistics.median(base["blocked"][1:])
    print(f"state: {base['state'] / 2**20:.0f} MiB, {args.saves} saves per mode; baseline: torch.save, no fsync")
    print(f"{'mode':<34} {'row':<6} {'blocked s':>10} {'x baseline':>11} {'peak extra RSS':>15}")
    names = {"torch.save": "torch.save (baseline)", "sync": "synchronous", "background": "background",
             "bounded": "background, max_host_memory=state/4"}
    for mode, result in results.items():
        first, warm = result["blocked"][0], statistics.median(result["blocked"][1:])
        extra = f"{result['extra'] / result['state']:.2f}x state"
        print(f"{names[mode]:<34} {'first':<6} {first:>10.3f} {first / first_base:>11.2f} {extra:>15}")
        print(f"{names[mode]:<34} {'warm':<6} {warm:>10.3f} {warm / warm_base:>11.2f} {'':>15}")


if __name__ == "__main__":
    main()
