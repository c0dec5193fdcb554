#!/usr/bin/env bash
# Installs the whole stack into .venv/ at the repository root: Python 3.11, torch 2.13 (CPU),
# AllenNLP 2.10.1 with the substitutions that make it run on Python 3.11 + torch 2.x
# (see README, "Installing AllenNLP 2.10.1 on Python 3.11"), and trainer_ckpt in editable mode.
# Idempotent: when .venv/ already holds a complete install of this exact recipe, it returns at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.trainer_ckpt_installed"
# The recipe's fingerprint: this script plus setup.py. Changing either reinstalls.
want="$(cat "$root/scripts/setup_env.sh" "$root/setup.py" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "setup_env.sh: Python 3.11 is required, got $("$python" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
}
echo "setup_env.sh: installing into $venv (about 2 minutes on a fresh machine)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first and exactly: any other version would pull several GB of CUDA packages.
"${pip[@]}" "torch==2.13.0"
# AllenNLP pins torch<1.13 (no cp311 wheel): install it and the two packages it imports at top
# level without their dependency pins. torchvision 0.16.2's Python part imports on torch 2.13
# (0.17+ fails with "operator torchvision::nms does not exist"); fairscale's own pins pull another torch.
"${pip[@]}" --no-deps "allennlp==2.10.1" "torchvision==0.16.2" "fairscale==0.4.13"
# AllenNLP's runtime dependencies, with the versions that work on Python 3.11:
# transformers 4.57 removed transformers.AdamW, which allennlp.training.optimizers subclasses.
"${pip[@]}" "torch==2.13.0" jsonnet cached-path spacy nltk tensorboardX tqdm h5py scikit-learn scipy \
  "transformers==4.44.2" sentencepiece filelock lmdb more-itertools "termcolor==1.1.0" \
  huggingface-hub dill base58 sacremoses typer "protobuf<4" traitlets requests numpy pillow \
  pytest
# pip then reports "allennlp 2.10.1 requires torch<1.13.0, ..." resolver conflicts: expected, harmless.
"${pip[@]}" --no-deps -e "$root"
PYTHONWARNINGS=ignore "$venv/bin/python" -c 'import allennlp.training, torch, trainer_ckpt; print("ok", torch.__version__)' >/dev/null
echo "$want" > "$stamp"
echo "setup_env.sh: done" >&2
