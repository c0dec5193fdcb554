"""
detectron2's `tools/plain_train_net.py` training loop, transplanted (detectron2 is not installed
here): its `do_train` as written, over the data pipeline of `build_detection_train_loader` (an
endless `TrainingSampler` seeded by `shared_random_seed()`, sharded over the workers by
`ToIterableDataset`, a mapper with random augmentation, `worker_init_reset_seed`), with a small
model with dropout. The checkpointer is trainer_ckpt.fvcore's, with one line changed:

    data_loader = build_detection_train_loader(cfg)                          # detectron2
    data_loader = checkpointer.resumable(build_detection_train_loader, cfg)  # exact resume

    .venv/bin/python scripts/detectron2_loop.py runs/d2 --kill-at 16,21   # SIGKILL after 16, then 21
    .venv/bin/python scripts/detectron2_loop.py runs/d2                   # resumes
    .venv/bin/python scripts/detectron2_loop.py --compare                 # max |final - uninterrupted|

`--peer` runs fvcore's own checkpointer with the script as detectron2 has it; `--as-written`
ours without the changed line. Each run notes where it starts in `starts.jsonl` (tests/_resume.py).
"""
import argparse
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._resume import note_start  # noqa: E402


# ---- detectron2's data pipeline, as in detectron2/data/{samplers,common,build}.py -------------

def seed_all_rng(seed):
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)


def shared_random_seed():
    return np.random.randint(2**31)  # one process: comm.all_gather of it is itself


class TrainingSampler(torch.utils.data.Sampler):
    """Endless indices: a new shuffle of the dataset after each pass, from a generator of its own."""

    def __init__(self, size, shuffle=True, seed=None):
        self._size, self._shuffle = size, shuffle
        self._seed = int(shared_random_seed() if seed is None else seed)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            yield from (torch.randperm(self._size, generator=g) if self._shuffle else torch.arange(self._size)).tolist()


class ToIterableDataset(torch.utils.data.IterableDataset):
    """The sampler's indices, each worker taking its own chunks of `shard_chunk_size`."""

    def __init__(self, dataset, sampler, shard_chunk_size=1):
        self.dataset, self.sampler, self.shard_chunk_size = dataset, sampler, shard_chunk_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        indices = iter(self.sampler)
        if info is not None and info.num_workers > 1:
            chunks = zip(*[indices] * self.shard_chunk_size)
            indices = itertools.chain.from_iterable(itertools.islice(chunks, info.id, None, info.num_workers))
        for idx in indices:
            yield self.dataset[idx]


class MapDataset(torch.utils.data.Dataset):
    def __init__(self, dataset, map_func):
        self._dataset, self._map_func = dataset, map_func

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, idx):
        return self._map_func(self._dataset[idx])


def worker_init_reset_seed(worker_id):
    initial_seed = torch.initial_seed() % 2**31
    seed_all_rng(initial_seed + worker_id)


def trivial_batch_collator(batch):
    return batch


def mapper(record):
    """The DatasetMapper's part that matters here: random augmentation from every generator."""
    x, y = record
    flip = -1.0 if random.random() < 0.5 else 1.0
    return {"image": flip * x + 0.1 * torch.randn(8) + 0.01 * float(np.random.rand()), "label": y}


def build_detection_train_loader(cfg):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(96, 8, generator=g)
    records = list(zip(x, (x[:, :4].sum(1) > 0).long()))
    dataset = MapDataset(records, mapper)
    sampler = TrainingSampler(len(dataset))
    batch_size = cfg.SOLVER.IMS_PER_BATCH
    return torch.utils.data.DataLoader(
        ToIterableDataset(dataset, sampler, shard_chunk_size=batch_size), batch_size=batch_size, drop_last=True,
        num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator, worker_init_fn=worker_init_reset_seed,
    )


# ---- plain_train_net.py's do_train, as written (writers, EventStorage and evaluation left out) -----

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

    def forward(self, data):
        images = torch.stack([d["image"] for d in data])
        labels = torch.stack([d["label"] for d in data])
        return {"loss_cls": nn.functional.cross_entropy(self.net(images), labels)}


def do_train(cfg, model, resume=False, peer=False, as_written=False, kill_at=()):
    if peer:
        from fvcore.common.checkpoint import Checkpointer as DetectionCheckpointer, PeriodicCheckpointer
    else:
        from trainer_ckpt.fvcore import Checkpointer as DetectionCheckpointer, PeriodicCheckpointer
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.SOLVER.BASE_LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)

    checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, optimizer=optimizer, scheduler=scheduler)
    start_iter = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume).get("iteration", -1) + 1
    max_iter = cfg.SOLVER.MAX_ITER

    periodic_checkpointer = PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter=max_iter)

    if peer or as_written:
        data_loader = build_detection_train_loader(cfg)
    else:
        data_loader = checkpointer.resumable(build_detection_train_loader, cfg)  # the one line changed
    note_start(cfg.OUTPUT_DIR, start_iter)
    kill = next((k for k in kill_at if not os.path.exists(os.path.join(cfg.OUTPUT_DIR, f"killed-{k}"))), -1)
    for data, iteration in zip(data_loader, range(start_iter, max_iter)):
        loss_dict = model(data)
        losses = sum(loss_dict.values())
        assert torch.isfinite(losses).all(), loss_dict

        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        scheduler.step()

        periodic_checkpointer.step(iteration)
        if iteration == kill:
            open(os.path.join(cfg.OUTPUT_DIR, f"killed-{kill}"), "w").close()  # once: the resumed run goes past it
            os.kill(os.getpid(), signal.SIGKILL)


def setup(out, workers):
    cfg = SimpleNamespace(
        OUTPUT_DIR=out, SEED=7, MODEL=SimpleNamespace(WEIGHTS=""),
        SOLVER=SimpleNamespace(IMS_PER_BATCH=8, BASE_LR=1e-2, MAX_ITER=36, CHECKPOINT_PERIOD=5),
        DATALOADER=SimpleNamespace(NUM_WORKERS=workers),
    )
    os.makedirs(out, exist_ok=True)
    seed_all_rng(cfg.SEED)  # default_setup
    return cfg


def final_state(out: str) -> dict:
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)


def run(out, kill_at="", workers=0, peer=False, as_written=False) -> int:
    command = [sys.executable, __file__, out, "--kill-at", kill_at, "--workers", str(workers)]
    command += (["--peer"] if peer else []) + (["--as-written"] if as_written else [])
    return subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}).returncode


def compare(kill_at="16,21", workers=2) -> dict:
    """{set-up: max difference of the final weights, killed at `kill_at` and resumed, vs uninterrupted}."""
    from scripts.plain_loop import max_difference

    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name, options in [("trainer_ckpt.fvcore, one line changed", {}), ("trainer_ckpt.fvcore, as written", {"as_written": True}),
                              ("fvcore, as written", {"peer": True})]:
            full, cut = (os.path.join(root, f"{name}-{which}") for which in ("full", "cut"))
            assert run(full, workers=workers, **options) == 0
            while run(cut, kill_at=kill_at, workers=workers, **options) != 0:
                pass
            results[name] = max_difference(final_state(full), final_state(cut))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--kill-at", default="", help="iterations to SIGKILL after, comma-separated: each once, in turn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peer", action="store_true", help="fvcore's own checkpointer")
    parser.add_argument("--as-written", action="store_true", help="ours, without the changed line")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    if args.compare:
        for name, diff in compare(workers=args.workers).items():
            print(f"{name:40s} SIGKILL after iterations 16 and 21, resumed twice: max |final - uninterrupted| = {diff:.3g}")
        return 0
    cfg = setup(args.out, args.workers)
    model = Model()
    do_train(cfg, model, resume=True, peer=args.peer, as_written=args.as_written,
             kill_at=[int(k) for k in args.kill_at.split(",") if k])
    return 0


if __name__ == "__main__":
    sys.exit(main())
