"""
The main job: a real `allennlp train` on the shipped fixture (fixtures/configs/main_job.jsonnet:
save every 5 batches and at epoch ends, keep 3), SIGKILLed in the middle of epoch 1, then
`allennlp train --recover` to the end. Prints what was on disk at each step.

Run with `bash scripts/main_job.sh [serialization_dir]` (default runs/main_job).
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
MAIN_CONFIG = ROOT / "fixtures" / "configs" / "main_job.jsonnet"


def allennlp_train(
    config: Path,
    serialization_dir: Path,
    *,
    recover: bool = False,
    kill_at: Optional[str] = None,
    packages: Sequence[str] = ("trainer_ckpt", "kill_switch"),
    cwd: Path = ROOT,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Runs `allennlp train` in a subprocess; `kill_at="E:B"` arms the kill switch."""
    command = [str(ROOT / ".venv" / "bin" / "allennlp"), "train", str(config), "-s", str(serialization_dir)]
    for package in packages:
        command += ["--include-package", package]
    if recover:
        command.append("--recover")
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "fixtures" / "plugins"), full_env.get("PYTHONPATH", "")]
    )
    full_env.pop("TRAINER_CKPT_KILL_AT", None)
    if kill_at is not None:
        full_env["TRAINER_CKPT_KILL_AT"] = kill_at
    # Output goes to files, not pipes: a data-loader worker that outlives a killed trainer keeps
    # its inherited pipe ends open, and reading a pipe to its end would wait for the worker.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        run = subprocess.run(command, cwd=cwd, env=full_env, stdout=stdout, stderr=stderr, text=True)
        stdout.seek(0), stderr.seek(0)
        run.stdout, run.stderr = stdout.read(), stderr.read()
    return run


def checkpoint_files(serialization_dir: Path, prefixes: Sequence[str] = ("",)) -> List[str]:
    """The checkpoint files (state files and their records) in a run directory."""
    from trainer_ckpt.stores import CheckpointDir

    layouts = [CheckpointDir(str(serialization_dir), prefix) for prefix in prefixes]
    return sorted(p.name for p in Path(serialization_dir).iterdir() if any(l.parse(p.name) for l in layouts))


def states(serialization_dir: Path) -> List[str]:
    """The complete checkpoints in a run directory, oldest first: ["e1_b0", "e1_b5", ...]."""
    from trainer_ckpt.stores import CheckpointDir

    return [f"e{e}_b{b}" for (e, b), *_ in CheckpointDir(str(serialization_dir)).list(None).complete]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "main_job"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"1. allennlp train {MAIN_CONFIG.relative_to(ROOT)} -s {out}, SIGKILLed after batch 12 of epoch 1")
    first = allennlp_train(MAIN_CONFIG, out, kill_at="1:12")
    if first.returncode != -signal.SIGKILL:
        print(first.stderr[-3000:])
        print(f"expected the run to die of SIGKILL, got return code {first.returncode}")
        return 1
    print("   killed; checkpoints on disk:", " ".join(states(out)))
    print("2. allennlp train ... --recover")
    second = allennlp_train(MAIN_CONFIG, out, recover=True)
    if second.returncode != 0:
        print(second.stderr[-3000:])
        print(f"--recover failed with return code {second.returncode}")
        return 1
    log = (second.stdout + second.stderr).splitlines()
    restored = [line for line in log if "Restoring checkpoint" in line]
    print("  ", restored[0].split(" - ")[-1] if restored else "(no restore logged)")
    print("   finished; checkpoints on disk:", " ".join(states(out)))
    metrics = json.loads((out / "metrics.json").read_text())
    print(
        f"   epochs trained: {metrics['epoch'] + 1}, best validation accuracy "
        f"{metrics['best_validation_accuracy']:.3f}, model archive: {(out / 'model.tar.gz').exists()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
