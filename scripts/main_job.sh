#!/usr/bin/env bash
# The main job: installs the stack into .venv/ when needed, then runs a real `allennlp train` on
# the shipped fixture, SIGKILLs it in the middle of an epoch, and finishes it with `--recover`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
PYTHONWARNINGS=ignore exec .venv/bin/python scripts/main_job.py "$@"
