#!/usr/bin/env bash
# The test command: installs the stack into .venv/ when it is not there yet, then runs the whole
# suite, in 2 worker processes (pytest-xdist; each test file stays in one worker, so module-wide
# fixtures such as the uninterrupted reference runs are trained once; TRAINER_CKPT_TEST_WORKERS=0
# runs it in one process). Extra arguments go to pytest (e.g. `bash scripts/run_tests.sh -k policies`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
workers="${TRAINER_CKPT_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --durations=15 "$@"
