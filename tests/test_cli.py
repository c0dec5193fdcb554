"""
`python -m trainer_ckpt ls|verify` and `allennlp checkpoints ...`, run as real subprocesses on real
run directories: AllenNLP pairs, an ignite directory, a corrupt checkpoint, a live writer's lock.
"""
import json
import os
import subprocess
import sys

import torch
from ignite.engine import Engine, Events

from tests.conftest import ROOT, trainer_at
from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt.ignite import Checkpoint, DiskSaver

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args, program=(sys.executable, "-m", "trainer_ckpt"), cwd=ROOT):
    return subprocess.run([*program, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV)


def allennlp_pairs(directory):
    checkpointer = DefaultCheckpointer(directory, save_completed_epochs=True, keep_most_recent_by_count=None)
    for epoch in (1, 2, 3):
        checkpointer.maybe_save_checkpoint(trainer_at(epoch, 0), epoch, 0)
    checkpointer.close()


def ignite_dir(directory):
    model = torch.nn.Linear(2, 2)
    trainer = Engine(lambda engine, batch: None)
    saver = DiskSaver(directory)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint({"model": model}, saver, n_saved=2))
    trainer.run([0, 1], max_epochs=3)
    saver.engine.close()  # gives up the writer's lock, as the end of the training process would


def test_ls_lists_each_checkpoint_of_an_allennlp_run(tmp_path):
    allennlp_pairs(tmp_path)
    result = cli("ls", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["checkpoint", "saved", "size", "checksum", "metrics"]
    assert [line.split()[0] for line in lines[1:]] == ["e1_b0", "e2_b0", "e3_b0"]
    assert all("recorded" in line for line in lines[1:])
    rows = json.loads(cli("ls", tmp_path, "--json").stdout)
    assert [(r["name"], r["progress"]["epochs_completed"], r["layout"]) for r in rows] == [
        ("e1_b0", 1, "AllenNLP pairs"), ("e2_b0", 2, "AllenNLP pairs"), ("e3_b0", 3, "AllenNLP pairs")]
    assert rows[0]["files"] == ["model_state_e1_b0.th", "training_state_e1_b0.th"]


def test_verify_passes_a_good_directory_and_fails_a_corrupt_one(tmp_path):
    ignite_dir(tmp_path)
    good = cli("verify", tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1] == f"all checkpoints in {tmp_path} are good"
    newest = tmp_path / "model_6.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    bad = cli("verify", tmp_path)
    assert bad.returncode == 1
    assert "model_6.pt" in bad.stdout and "BAD: model_6.pt has CRC32" in bad.stdout
    assert bad.stdout.splitlines()[-1] == f"1 bad checkpoint(s) in {tmp_path}"
    moved = cli("verify", tmp_path, "--quarantine")
    assert moved.returncode == 1 and "model_6.pt.rng into corrupt/" in moved.stdout
    assert (tmp_path / "corrupt" / "model_6.pt").exists() and not newest.exists()
    assert cli("verify", tmp_path).returncode == 0


def test_quarantine_is_refused_while_a_writer_holds_the_lock(tmp_path):
    allennlp_pairs(tmp_path)
    writer = DefaultCheckpointer(tmp_path)  # holds the directory's lock in this process
    try:
        result = cli("verify", tmp_path, "--quarantine")
        assert result.returncode == 2
        assert result.stderr.startswith(f"trainer_ckpt: cannot quarantine in {tmp_path}: ")
        assert "is in use by another training process" in result.stderr
        assert cli("verify", tmp_path).returncode == 0  # reading needs no lock
    finally:
        writer.close()


def test_errors_are_one_line(tmp_path):
    result = cli("ls", tmp_path / "missing")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trainer_ckpt: cannot read {tmp_path / 'missing'}: No such file or directory. Give a run directory."]


def test_the_same_commands_as_an_allennlp_subcommand(tmp_path):
    """AllenNLP finds plugin subcommands through a `.allennlp_plugins` file (it reads
    `--include-package` only after it has parsed the subcommand's arguments)."""
    run_dir, workdir = tmp_path / "run", tmp_path / "work"
    run_dir.mkdir(), workdir.mkdir()
    allennlp_pairs(run_dir)
    (workdir / ".allennlp_plugins").write_text("trainer_ckpt\n")
    allennlp = os.path.join(os.path.dirname(sys.executable), "allennlp")
    result = cli("checkpoints", "ls", run_dir, program=(allennlp,), cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["e1_b0", "e2_b0", "e3_b0"]
    assert cli("checkpoints", "verify", run_dir, program=(allennlp,), cwd=workdir).returncode == 0
