#!/usr/bin/env bash
# The test command: installs the stack into .venv/ when it is not there yet, then runs the whole
# suite. Extra arguments go to pytest (e.g. `bash scripts/run_tests.sh -k policies`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
