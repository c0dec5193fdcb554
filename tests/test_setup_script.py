"""
scripts/setup_env.sh talks to a new user in one line per step and keeps pip's output in
.venv/install.log, showing it only when a step fails. Run here against a stand-in pip (a fake
`.venv/bin/python`) that prints pip's expected resolver complaint, so nothing is installed.
"""
import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$2" = pip ]; then
  echo "WARNING: Location 'file:///opt/pypi/simple/torch/' is ignored: it is neither a file nor a directory."
  echo "ERROR: pip's dependency resolver does not currently take into account all the packages that are installed."
  echo "allennlp 2.10.1 requires torch<1.13.0,>=1.10.0, but you have torch 2.13.0 which is incompatible."
  case "$*" in *"$FAIL_ON"*) echo "ERROR: No matching distribution found for $FAIL_ON" >&2; exit 1;; esac
fi
exit 0
"""


def setup(tmp_path, fail_on="no-such-thing"):
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts", dirs_exist_ok=True)
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": sys.executable if sys.version_info[:2] == (3, 11) else "python3.11", "FAIL_ON": fail_on}
    return subprocess.run(["bash", "scripts/setup_env.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_a_good_install_prints_one_line_per_step_and_logs_pip(tmp_path):
    run = setup(tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith("setup_env.sh: installing into ")
    assert [line.split(" ... ")[1].split(" ")[0] for line in lines[1:-1]] == ["ok"] * 8, run.stderr
    assert lines[-1] == "setup_env.sh: done" and run.stdout == ""
    assert "ERROR" not in run.stderr and "WARNING" not in run.stderr
    log = (tmp_path / ".venv" / "install.log").read_text()
    assert log.count("ERROR: pip's dependency resolver") == 7  # kept, for whoever wants it
    again = setup(tmp_path)  # complete: a no-op, silent
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_a_failing_step_shows_pips_output(tmp_path):
    run = setup(tmp_path, fail_on="mmengine==0.10.7")
    assert run.returncode == 1
    assert "[4/8] peers for the tests: fvcore, pytorch-ignite, mmengine, lightning, torchdata (pinned); safetensors, s3fs, moto ... FAILED (exit 1)" in run.stderr
    assert "ERROR: No matching distribution found for mmengine==0.10.7" in run.stderr
    assert 'step "peers for the tests: fvcore, pytorch-ignite, mmengine, lightning, torchdata (pinned); safetensors, s3fs, moto" failed; the whole output is in' in run.stderr
    assert not (tmp_path / ".venv" / ".trainer_ckpt_installed").exists()  # the next run tries again
