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
    assert lines[0].split() == ["checkpoint", "saved", "size", "checksum", "metrics", "kept", "by"]
    assert [line.split()[0] for line in lines[1:4]] == ["e1_b0", "e2_b0", "e3_b0"]
    assert all("recorded" in line for line in lines[1:4])
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
    assert [line.split()[0] for line in result.stdout.splitlines()[1:4]] == ["e1_b0", "e2_b0", "e3_b0"]
    assert cli("checkpoints", "verify", run_dir, program=(allennlp,), cwd=workdir).returncode == 0


# ---- what keeps each checkpoint, prune --------------------------------------------------------

def write_config(directory, checkpointer):
    (directory / "config.json").write_text(json.dumps({"trainer": {"checkpointer": checkpointer}}))


def kept_by(stdout):
    """checkpoint name -> its `kept by` text, from ls's table."""
    lines = stdout.splitlines()
    start = lines[0].index("kept by")
    return {line.split()[0]: line[start:].strip() for line in lines[1:] if not line.startswith("(")}


def test_ls_says_what_keeps_each_checkpoint_from_the_runs_config(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "allennlp"
    allennlp_pairs(ours)
    write_config(ours, {"type": "trainer_ckpt", "keep_most_recent_by_count": 2})
    assert kept_by(cli("ls", ours).stdout) == {
        "e1_b0": "nothing: the next save deletes it",
        "e2_b0": "most_recent_by_count(2)",
        "e3_b0": "most_recent_by_count(2), newest complete checkpoint (always kept)"}
    # AllenNLP's own checkpointer and files: its keep rules, read from the same config keys.
    from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer

    theirs.mkdir()
    checkpointer = AllenNlpCheckpointer(str(theirs), keep_most_recent_by_count=None)
    for epoch in (1, 2):
        checkpointer.maybe_save_checkpoint(trainer_at(epoch, 0), epoch, 0)
    write_config(theirs, {"keep_most_recent_by_count": 1})
    rows = json.loads(cli("ls", theirs, "--json").stdout)
    assert [(r["name"], r["checksummed"], r["kept_by"]) for r in rows] == [
        ("e1_b0", False, []), ("e2_b0", False, ["most_recent_by_count(1)", "newest complete checkpoint (always kept)"])]
    # Without a config (the other faces), --policy says it.
    directory = tmp_path / "ignite"
    ignite_dir(directory)
    result = cli("ls", directory)
    assert "kept by: unknown without a retention policy" in result.stdout
    assert set(kept_by(cli("ls", directory, "--policy", '{type: "most_recent_by_count", count: 1}').stdout).values()) == {
        "nothing: the next save deletes it", "most_recent_by_count(1), newest complete checkpoint (always kept)"}


def test_prune_explains_deletes_only_what_the_policy_drops_and_keeps_the_newest_good(tmp_path):
    allennlp_pairs(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    policy = '{"type": "most_recent_by_count", "count": 1}'
    dry = cli("prune", tmp_path, "--policy", policy, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would delete e1_b0: most_recent_by_count(1) does not keep it",
        "would delete e2_b0: most_recent_by_count(1) does not keep it",
        "keep    e3_b0: most_recent_by_count(1), newest complete checkpoint (always kept)",
        f"2 checkpoint(s) would be deleted from {tmp_path}"]
    assert len(list(tmp_path.glob("model_state_*.th"))) == 3  # a dry run deletes nothing
    # The newest is corrupt: the newest good one is kept too, whatever the policy says.
    newest = tmp_path / "model_state_e3_b0.th"
    newest.write_bytes(newest.read_bytes()[:-10])
    result = cli("prune", tmp_path, "--policy", policy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "delete  e1_b0: most_recent_by_count(1) does not keep it",
        "keep    e2_b0: newest good checkpoint (always kept)",
        "keep    e3_b0: most_recent_by_count(1), newest complete checkpoint (always kept)",
        f"1 checkpoint(s) deleted from {tmp_path}"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "checkpoint_e2_b0.json", "checkpoint_e3_b0.json", "model_state_e2_b0.th", "model_state_e3_b0.th",
        "notes.txt", "training_state_e2_b0.th", "training_state_e3_b0.th"]


def test_prune_leaves_files_it_did_not_write_and_refuses_while_a_run_holds_the_lock(tmp_path):
    ignite_dir(tmp_path)
    stranger = tmp_path / "pretrained.pt"
    torch.save({"w": torch.ones(2)}, stranger)
    os.utime(stranger, (1, 1))  # older than every checkpoint
    result = cli("prune", tmp_path, "--policy", "most_recent_by_count")  # a bare type name: count 2... is required
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("trainer_ckpt: ") and "count" in result.stderr
    result = cli("prune", tmp_path, "--policy", '{"type": "most_recent_by_count", "count": 1}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "keep    pretrained.pt: not written by trainer_ckpt (no record), left alone"
    assert stranger.exists() and sorted(p.name for p in tmp_path.glob("*.pt")) == ["model_6.pt", "pretrained.pt"]
    writer = DiskSaver(tmp_path, require_empty=False)
    writer.engine  # takes the directory's lock, as a training process does
    try:
        locked = cli("prune", tmp_path, "--policy", '{"type": "most_recent_by_count", "count": 1}')
        assert locked.returncode == 2, locked.stdout
        assert locked.stderr.startswith(f"trainer_ckpt: cannot prune {tmp_path}: ")
        assert locked.stderr.strip().endswith("Prune when training has stopped, or see what it would delete with --dry-run.")
        assert "is in use by another training process" in locked.stderr
    finally:
        writer.engine.close()


# ---- export, diff ------------------------------------------------------------------------------

def sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_the_model_weights_alone_with_their_checksum(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    allennlp_pairs(run)
    out = tmp_path / "e2.safetensors"
    result = cli("export", run, "--checkpoint", "e2_b0", "--to", out, "--format", "safetensors")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"sha256 {sha256(out)}  {out}"
    torch.testing.assert_close(load_file(str(out)), trainer_at(2, 0)._model_state, rtol=0, atol=0)
    latest = tmp_path / "latest.th"
    assert cli("export", run, "--to", latest).returncode == 0
    torch.testing.assert_close(torch.load(latest, weights_only=True), trainer_at(3, 0)._model_state, rtol=0, atol=0)
    # An ignite directory: the weights are the "model" entry of each checkpoint.
    ignite = tmp_path / "ignite"
    ignite_dir(ignite)
    out = tmp_path / "ignite.pt"
    result = cli("export", ignite / "model_6.pt", "--to", out)
    assert result.returncode == 0, result.stderr
    saved = torch.load(ignite / "model_6.pt", weights_only=True)  # ignite saves one object's state dict alone
    torch.testing.assert_close(torch.load(out, weights_only=True), saved, rtol=0, atol=0)
    missing = cli("export", run, "--checkpoint", "e9_b0", "--to", tmp_path / "x.pt")
    assert missing.returncode == 2 and not (tmp_path / "x.pt").exists()
    assert missing.stderr.strip() == (f"trainer_ckpt: no checkpoint named 'e9_b0' in {run}, got e1_b0, e2_b0, e3_b0. "
                                      "Use one of those, best or latest.")
    best = cli("export", run, "--checkpoint", "best", "--to", tmp_path / "x.pt")
    assert best.returncode == 2 and "is marked best. Name one with --checkpoint." in best.stderr


def test_export_of_an_mmengine_work_dir(tmp_path):
    from tests.test_mmengine_face import train

    runner = train(tmp_path / "work", save_best="acc")
    out = tmp_path / "best.pt"
    result = cli("export", tmp_path / "work", "--checkpoint", "best", "--to", out)
    assert result.returncode == 0, result.stderr
    best = next(p for p in os.listdir(tmp_path / "work") if p.startswith("best_"))
    assert result.stdout.startswith(f"exported {best} from ")
    weights = torch.load(out, weights_only=True)
    assert set(weights) == set(runner.model.state_dict())


def test_diff_names_what_changed_between_two_checkpoints(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    allennlp_pairs(a), allennlp_pairs(b)
    same = cli("diff", a, b)
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines()[-1].endswith(" identical, 0 differ")
    write_config(a, {"type": "trainer_ckpt", "keep_most_recent_by_count": 2})
    write_config(b, {"type": "trainer_ckpt", "keep_most_recent_by_count": 3})
    checkpointer = DefaultCheckpointer(b, save_completed_epochs=True, keep_most_recent_by_count=None)
    changed = trainer_at(4, 0)
    changed._model_state = {"weight": trainer_at(3, 0)._model_state["weight"] + torch.tensor([0.0, 0.5, 0.0])}
    changed._training_state = {**trainer_at(3, 0)._training_state, "epochs_completed": 4}
    checkpointer.maybe_save_checkpoint(changed, 4, 0)
    checkpointer.close()
    record = b / "checkpoint_e4_b0.json"
    record.write_text(record.read_text().replace('"world_size": 1', '"world_size": 2'))
    result = cli("diff", a, b)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"a: e3_b0 in {a}",
        f"b: e4_b0 in {b}",
        "config   trainer.checkpointer.keep_most_recent_by_count: 2 -> 3",
        "record   world_size: 1 -> 2",
        "tensor   model_state.weight: max abs diff 0.5",
        "value    training_state.epochs_completed: 3 -> 4",
        "resume   trainer_ckpt_resume (random state, data order, config): 1 of 1264 values differ",
        "3 tensors and values compared: 1 identical, 2 differ (largest max abs diff 0.5 in model_state.weight)"]
    files = cli("diff", a / "model_state_e3_b0.th", b / "training_state_e3_b0.th", "--json")
    assert files.returncode == 1, files.stderr
    assert json.loads(files.stdout)["differences"] == [
        {"what": "config", "key": "trainer.checkpointer.keep_most_recent_by_count", "a": 2, "b": 3}]
