"""
How far a killed-and-recovered `allennlp train` ends from an uninterrupted one, with our
checkpointer and with AllenNLP's own (fixtures/configs/exact_resume.jsonnet: dropout, shuffled
batches, Adam, a slanted-triangular schedule; saves every 5 batches).

    .venv/bin/python scripts/resume_drift.py [--kill-at 1:12] [--accumulation 3] [--moving-average]

Prints, per checkpointer, the largest absolute difference over every tensor of the final model
state, the optimizer state and best.th (0.0 means bit-identical).
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.main_job import ROOT, allennlp_train  # noqa: E402

CONFIG = ROOT / "fixtures" / "configs" / "exact_resume.jsonnet"


def variables(checkpointer: str, accumulation: int, moving_average: bool) -> Dict[str, str]:
    return {"TRAINER_CKPT_TEST_CHECKPOINTER": checkpointer, "TRAINER_CKPT_TEST_ACCUMULATION": str(accumulation),
            "TRAINER_CKPT_TEST_MOVING_AVERAGE": "true" if moving_average else "false"}


def train(out: Path, env: Dict[str, str], kill_at: str = None, recover: bool = False, distributed: bool = False) -> None:
    config = ROOT / "fixtures" / "configs" / ("exact_resume_distributed.jsonnet" if distributed else "exact_resume.jsonnet")
    run = allennlp_train(config, out, recover=recover, kill_at=kill_at, env=env)
    expected = -9 if kill_at else 0
    if run.returncode != expected and not (kill_at and distributed and run.returncode != 0):
        raise RuntimeError(f"allennlp train exited with {run.returncode}, expected {expected}:\n{run.stderr[-3000:]}")


def final_states(out: Path) -> Dict[str, Any]:
    """The tensors that must match: final weights, optimizer (and scheduler, moving average), best.th."""
    training = torch.load(out / "training_state_e3_b0.th", weights_only=True)
    kept = {k: training[k] for k in ("optimizer", "learning_rate_scheduler", "moving_average", "metric_tracker") if k in training}
    if "moving_average" in kept:
        kept["moving_average"] = {k: v for k, v in kept["moving_average"].items() if k != "parameters"}
    return {"model": torch.load(out / "model_state_e3_b0.th", weights_only=True), "training": kept,
            "best": torch.load(out / "best.th", weights_only=True)}


def max_difference(a: Any, b: Any, where: str = "") -> float:
    """Largest absolute difference between two nested states; raises if their structure differs."""
    if isinstance(a, dict):
        if a.keys() != b.keys():
            raise AssertionError(f"{where}: keys differ: {sorted(a)} vs {sorted(b)}")
        return max([max_difference(a[k], b[k], f"{where}.{k}") for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise AssertionError(f"{where}: lengths differ")
        return max([max_difference(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{where}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
        return 0.0 if torch.equal(a, b) else (a.double() - b.double()).abs().max().item()
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    if a != b:
        raise AssertionError(f"{where}: {a!r} vs {b!r}")
    return 0.0


def drift(checkpointer: str, kill_at: str, accumulation: int = 1, moving_average: bool = False) -> float:
    env = variables(checkpointer, accumulation, moving_average)
    with tempfile.TemporaryDirectory() as tmp:
        full, interrupted = Path(tmp) / "full", Path(tmp) / "interrupted"
        train(full, env)
        train(interrupted, env, kill_at=kill_at)
        train(interrupted, env, recover=True)
        return max_difference(final_states(full), final_states(interrupted))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill-at", default="1:12")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--moving-average", action="store_true")
    args = parser.parse_args()
    for checkpointer in ("trainer_ckpt", "default"):
        d = drift(checkpointer, args.kill_at, args.accumulation, args.moving_average)
        name = "trainer_ckpt" if checkpointer == "trainer_ckpt" else "AllenNLP's default"
        print(f"{name:20s} killed at {args.kill_at}, recovered: max |difference| from the uninterrupted run = {d:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
