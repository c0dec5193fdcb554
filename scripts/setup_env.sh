#!/usr/bin/env bash
# Installs the whole stack into .venv/ at the repository root: Python 3.11, torch 2.13 (CPU),
# AllenNLP 2.10.1 with the substitutions that make it run on Python 3.11 + torch 2.x
# (see README, "Installing AllenNLP 2.10.1 on Python 3.11"), the peers the faces are tested
# against (fvcore, pytorch-ignite, mmengine, lightning, pinned), the docs tools, trainer_ckpt in editable mode,
# and torch alone in .venv/torch-only, which the wheel's clean-install test builds on.
# Idempotent: when .venv/ already holds a complete install of this exact recipe, it returns at once.
# Quiet: one line per step; pip's whole output goes to .venv/install.log and is shown only when a
# step fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.trainer_ckpt_installed"
# The recipe's fingerprint: this script plus the package's metadata. Changing either reinstalls.
want="$(cat "$root/scripts/setup_env.sh" "$root/setup.py" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "setup_env.sh: Python 3.11 is required, got $("$python" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
}
mkdir -p "$venv"
log="$venv/install.log"
: > "$log"
echo "setup_env.sh: installing into $venv (about 2 minutes on a fresh machine; full log: $log)" >&2

n=0
total=8
[ -x "$venv/bin/python" ] || total=$((total + 1))
step() {  # step "what it does" command...: one line of progress; the log's tail only on failure
  local label="$1" start=$SECONDS
  shift
  n=$((n + 1))
  printf 'setup_env.sh: [%d/%d] %s ... ' "$n" "$total" "$label" >&2
  echo "=== [$n/$total] $label: $*" >> "$log"
  if "$@" >> "$log" 2>&1; then
    echo "ok ($((SECONDS - start)) s)" >&2
  else
    local rc=$?
    echo "FAILED (exit $rc)" >&2
    echo "--- the last 60 lines of $log ---" >&2
    tail -n 60 "$log" >&2
    echo "setup_env.sh: step \"$label\" failed; the whole output is in $log" >&2
    exit "$rc"
  fi
}

pip=("$venv/bin/python" -m pip install --disable-pip-version-check --no-input)
[ -x "$venv/bin/python" ] || step "creating the virtual environment" "$python" -m venv "$venv"
# torch first and exactly: any other version would pull several GB of CUDA packages.
step "torch 2.13.0 (CPU)" "${pip[@]}" "torch==2.13.0"
# AllenNLP pins torch<1.13 (no cp311 wheel): install it and the two packages it imports at top
# level without their dependency pins. torchvision 0.16.2's Python part imports on torch 2.13
# (0.17+ fails with "operator torchvision::nms does not exist"); fairscale's own pins pull another torch.
step "AllenNLP 2.10.1, torchvision, fairscale (without their pins)" \
  "${pip[@]}" --no-deps "allennlp==2.10.1" "torchvision==0.16.2" "fairscale==0.4.13"
# AllenNLP's runtime dependencies, with the versions that work on Python 3.11:
# transformers 4.57 removed transformers.AdamW, which allennlp.training.optimizers subclasses.
# pip then reports "allennlp 2.10.1 requires torch<1.13.0, ..." resolver conflicts (kept in the
# log): expected and harmless.
step "AllenNLP's runtime dependencies and pytest" \
  "${pip[@]}" "torch==2.13.0" jsonnet cached-path spacy nltk tensorboardX tqdm h5py scikit-learn scipy \
  "transformers==4.44.2" sentencepiece filelock lmdb more-itertools "termcolor==1.1.0" \
  huggingface-hub dill base58 sacremoses typer "protobuf<4" traitlets requests numpy pillow \
  pytest "pytest-xdist==3.8.0"
# The peers whose APIs the faces reproduce, for the interop tests (trainer_ckpt itself imports
# none of them unless a face is used), safetensors for `export --format safetensors`, and s3fs with
# moto's standalone S3 server for the object-storage tests (a real server on 127.0.0.1).
step "peers for the tests: fvcore, pytorch-ignite, mmengine, lightning, torchdata (pinned); safetensors, s3fs, moto" \
  "${pip[@]}" "torch==2.13.0" "termcolor==1.1.0" "fvcore==0.1.5.post20221221" "pytorch-ignite==0.5.5" "mmengine==0.10.7" \
  "lightning==2.6.6" "torchdata==0.11.0" \
  safetensors "s3fs==2026.9.0" "moto[server]==5.2.5"
# The docs site (mkdocs-material, mkdocstrings for the API pages; built --strict by the tests) and
# `build`, which makes the sdist and wheel that the clean-install test installs.
step "docs and packaging tools: mkdocs-material, mkdocstrings, build" \
  "${pip[@]}" "mkdocs==1.6.1" "mkdocs-material==9.8.2" "mkdocstrings==1.0.8" "mkdocstrings-python==2.0.11" \
  "build==1.6.1" "setuptools>=69"
# isal: ISA-L's CRC32 (trainer_ckpt's "fast" extra), 4x zlib's for the checksums of every save and load.
step "trainer_ckpt (editable), with isal" "${pip[@]}" --no-deps --no-build-isolation -e "$root" "isal==1.9.1"
# The wheel's test installs trainer-ckpt[ignite,fvcore] as a user would, into a fresh environment
# with no AllenNLP; torch (the one heavy dependency) comes from this folder, seen through a .pth.
step "torch alone, for the clean-install test (.venv/torch-only)" \
  "${pip[@]}" --upgrade --target "$venv/torch-only" "torch==2.13.0"
step "checking the imports" env PYTHONWARNINGS=ignore "$venv/bin/python" -c \
  'import allennlp.training, torch, trainer_ckpt, fvcore.common.checkpoint, ignite.handlers, mmengine.runner, lightning.pytorch; print("ok", torch.__version__)'
echo "$want" > "$stamp"
echo "setup_env.sh: done" >&2
