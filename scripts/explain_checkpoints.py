"""
Dry run of retention for a run directory: for each checkpoint on disk, which rules keep it.
Builds the checkpointer from the run's own config.json, deletes nothing.

    .venv/bin/python scripts/explain_checkpoints.py runs/my_run [--include-package my_policies]

    checkpoint  saved                accuracy  kept by
    e3_b0       2026-11-24 12:31:05  0.7625    best(+accuracy, count=2)
    e4_b0       2026-11-24 12:31:06  0.7625    (nothing: the next save deletes it)
    e5_b0       2026-11-24 12:31:07  0.8       best(+accuracy, count=2), most_recent_by_count(2), ...
"""
import argparse
import datetime
import importlib
import sys
from pathlib import Path
from typing import List


def explain(run_dir: Path) -> List[str]:
    from allennlp.common import Params
    from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer

    from trainer_ckpt import CheckpointerGroup, DefaultCheckpointer

    params = Params.from_file(str(run_dir / "config.json"))
    config = params.get("trainer", {}).get("checkpointer")
    if config is None:
        return [f"{run_dir}: its config uses AllenNLP's default checkpointer, not trainer_ckpt."]
    # read_only: no lock, no clean-up, so it also works on a run that is training right now.
    checkpointer = AllenNlpCheckpointer.from_params(config, serialization_dir=str(run_dir), read_only=True)
    members = checkpointer.members if isinstance(checkpointer, CheckpointerGroup) else [checkpointer]
    lines = []
    for member in members:
        if not isinstance(member, DefaultCheckpointer):
            lines.append(f"{type(member).__name__}: not a trainer_ckpt checkpointer, nothing to explain")
            continue
        explained = member.explain()
        metrics = sorted({k for c, _ in explained for k in c.metrics})
        prefix = member._store.prefix
        lines.append(f"{prefix or '(no prefix)'}: retention {member._retention_policy.describe()}")
        lines.append("  ".join(["checkpoint".ljust(12), "saved".ljust(19)] + [m[:10].ljust(10) for m in metrics] + ["kept by"]))
        for checkpoint, reasons in explained:
            saved = datetime.datetime.fromtimestamp(checkpoint.time).strftime("%Y-%m-%d %H:%M:%S")
            values = [f"{checkpoint.metrics[m]:.4g}".ljust(10) if m in checkpoint.metrics else "".ljust(10) for m in metrics]
            kept = ", ".join(reasons) or "(nothing: the next save deletes it)"
            lines.append("  ".join([(prefix + checkpoint.name).ljust(12), saved] + values + [kept]))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--include-package", action="append", default=[], help="a package with your policies")
    args = parser.parse_args()
    for package in ["trainer_ckpt", *args.include_package]:
        importlib.import_module(package)
    print("\n".join(explain(args.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
