"""
`python -m trainer_ckpt ls|verify` and `allennlp checkpoints ...`, run as real subprocesses on real
run directories: AllenNLP pairs, an ignite directory, a corrupt checkpoint, a live writer's lock.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest
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


# ---- the peers' own directories (mmengine's CheckpointHook, fvcore's PeriodicCheckpointer) -----

def run_main(capsys, *args):
    """The command in this process (a subprocess costs seconds of imports): (exit code, stdout, stderr)."""
    from trainer_ckpt.cli.commands import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def mmengine_work_dirs(tmp_path):
    """The same tiny Runner twice: with mmengine's own CheckpointHook ("theirs") and with ours."""
    from tests.test_mmengine_face import train

    train(tmp_path / "theirs", peer=True, max_epochs=2)
    train(tmp_path / "ours", max_epochs=2, restore_rng=False)  # mmengine's random stream: the same weights
    return tmp_path / "theirs", tmp_path / "ours"


def test_verify_export_diff_on_a_work_dir_of_mmengines_own_hook(tmp_path, capsys):
    """mmengine's checkpoints hold its message hub's HistoryBuffers: its work_dir loads them (they were
    a traceback and exit 1); the same state as ours is exit 0, our record's versions being metadata."""
    theirs, ours = mmengine_work_dirs(tmp_path)
    capsys.readouterr()  # the runners' own logs
    assert not any(n.startswith(".") for n in os.listdir(theirs))  # mmengine's alone: no record of ours
    result = cli("verify", theirs)  # as a user runs it
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.splitlines() == [f"{'epoch_1.pth':24s}  ok", f"{'epoch_2.pth':24s}  ok",
                                          f"all checkpoints in {theirs} are good"]
    out = tmp_path / "w.pt"
    code, stdout, err = run_main(capsys, "export", theirs, "--to", out)
    assert (code, err) == (0, ""), err
    assert stdout.startswith(f"exported epoch_2.pth from {theirs}: 4 tensors")
    from tests.test_mmengine_face import load

    torch.testing.assert_close(torch.load(out, weights_only=True), load(theirs / "epoch_2.pth")["state_dict"], rtol=0, atol=0)
    code, stdout, err = run_main(capsys, "diff", theirs, ours)
    assert (code, err) == (0, ""), err
    assert stdout.splitlines() == [
        f"a: epoch_2.pth in {theirs}",
        f"b: epoch_2.pth in {ours}",
        "record   a has no record (not written by trainer_ckpt): its versions and world size are unknown",
        "34 tensors and values compared: 34 identical, 0 differ",
        "the same state: only metadata (versions, world size, times) differs"]
    code, stdout, _ = run_main(capsys, "diff", theirs / "epoch_1.pth", ours, "--json")
    assert code == 1 and {"what": "value", "key": "checkpoint.meta.epoch", "a": 1, "b": 2} in json.loads(stdout)["differences"]
    # Moved work dir: mmengine's last_checkpoint names a path that is gone; its resume would fail.
    (theirs / "last_checkpoint").write_text("/gone/work_dir/epoch_2.pth")
    code, stdout, err = run_main(capsys, "verify", theirs)
    assert code == 0 and stdout.splitlines()[-1] == f"all checkpoints in {theirs} are good"
    assert err.splitlines() == [
        f"trainer_ckpt: warning: {theirs}/last_checkpoint names /gone/work_dir/epoch_2.pth, which does not exist: "
        f"mmengine's resume (resume=True) will not find a checkpoint. Write the newest good one into it: "
        f"printf %s {theirs}/epoch_2.pth > {theirs}/last_checkpoint"]
    (theirs / "last_checkpoint").write_text("")
    assert run_main(capsys, "verify", theirs)[2].startswith(f"trainer_ckpt: warning: {theirs}/last_checkpoint is empty: mmengine's")
    (theirs / "last_checkpoint").write_text(str(theirs / "epoch_2.pth"))  # what the warning said to write
    assert run_main(capsys, "verify", theirs)[2] == ""


def test_safe_globals_allows_a_type_by_name_and_refusals_are_one_line(tmp_path, capsys):
    """An mmengine checkpoint copied out of its work_dir is not its layout: its HistoryBuffer is refused
    in one line naming the option that allows it; --safe-globals allows it; a bad name is one line too."""
    from tests.test_mmengine_face import train

    train(tmp_path / "work", peer=True, max_epochs=1)
    capsys.readouterr()  # the runner's own logs
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "final.pth").write_bytes((tmp_path / "work" / "epoch_1.pth").read_bytes())
    history_buffer = "mmengine.logging.history_buffer.HistoryBuffer"
    code, stdout, err = run_main(capsys, "export", tmp_path / "copied", "--to", tmp_path / "w.pt")
    assert (code, stdout) == (2, "") and not (tmp_path / "w.pt").exists()
    assert err.splitlines() == [
        f"trainer_ckpt: cannot load final.pth in {tmp_path / 'copied'}: it holds types that safe loading refuses "
        f"({history_buffer}); nothing in it was run. If you trust it, run again with --safe-globals {history_buffer}."]
    code, stdout, err = run_main(capsys, "export", tmp_path / "copied", "--to", tmp_path / "w.pt", "--safe-globals", history_buffer)
    assert (code, err) == (0, ""), err
    code, stdout, err = run_main(capsys, "verify", tmp_path / "copied", "--safe-globals", f"{history_buffer},mmengine.logging.NoSuch")
    assert (code, stdout) == (2, "")
    assert err.splitlines() == [
        "trainer_ckpt: --safe-globals: cannot import 'mmengine.logging.NoSuch': mmengine.logging has no 'NoSuch'. "
        "Give each type by its dotted name, e.g. mmengine.logging.HistoryBuffer."]
    # A type of the user's own (argparse's Namespace: the `args` many scripts save), as a subprocess would see it.
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "copied" / "model.pt")
    refused = cli("verify", tmp_path / "copied", "--safe-globals", history_buffer)
    assert (refused.returncode, refused.stderr) == (2, (
        f"trainer_ckpt: cannot load model.pt in {tmp_path / 'copied'}: it holds types that safe loading refuses "
        "(argparse.Namespace); nothing in it was run. If you trust it, run again with --safe-globals argparse.Namespace.\n"))
    code, stdout, err = run_main(capsys, "verify", tmp_path / "copied", "--safe-globals", f"{history_buffer}, argparse.Namespace")
    assert (code, err) == (0, "") and stdout.splitlines()[-1] == f"all checkpoints in {tmp_path / 'copied'} are good"
    code, _, err = run_main(capsys, "ls", tmp_path / "copied", "--include-package", "no_such_package_xyz")
    assert code == 2 and err.splitlines() == [
        "trainer_ckpt: --include-package no_such_package_xyz: cannot import it, got ModuleNotFoundError: "
        "No module named 'no_such_package_xyz'. Give a package installed here (or on PYTHONPATH)."]


def fvcore_run(directory, iterations=6, period=2, optimizer=torch.optim.SGD, model=None):
    """fvcore's own Checkpointer and PeriodicCheckpointer, as detectron2's train_net.py drives them."""
    from fvcore.common.checkpoint import Checkpointer as FvcoreCheckpointer, PeriodicCheckpointer

    os.makedirs(directory, exist_ok=True)
    model = model or torch.nn.Linear(2, 2)
    opt = optimizer(model.parameters(), lr=0.1)
    periodic = PeriodicCheckpointer(FvcoreCheckpointer(model, str(directory), optimizer=opt), period, max_iter=iterations)
    for iteration in range(iterations):
        loss = model(torch.randn(4, 2)).pow(2).mean()
        opt.zero_grad(), loss.backward(), opt.step()
        periodic.step(iteration)
    return model


def test_verify_warns_when_fvcores_last_checkpoint_cannot_resume(tmp_path, capsys):
    from fvcore.common.checkpoint import Checkpointer as FvcoreCheckpointer

    fvcore_run(tmp_path)
    pointer = tmp_path / "last_checkpoint"
    assert pointer.read_text() == "model_final.pth"
    pointer.write_text("")  # a pointer write cut short
    with pytest.raises(AssertionError, match="not found"):  # fvcore itself cannot resume it
        FvcoreCheckpointer(torch.nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)
    result = cli("verify", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"all checkpoints in {tmp_path} are good"
    assert result.stderr.splitlines() == [
        f"trainer_ckpt: warning: {pointer} is empty: fvcore's resume (resume_or_load) will not find a checkpoint. "
        f"Write the newest good one into it: printf %s model_final.pth > {pointer}"]
    # The newest is gone too: the warning names the newest that is left and good.
    (tmp_path / "model_final.pth").unlink()
    pointer.write_text("model_final.pth")
    code, _, err = run_main(capsys, "verify", tmp_path)
    assert code == 0 and err.splitlines() == [
        f"trainer_ckpt: warning: {pointer} names model_final.pth, which does not exist: fvcore's resume (resume_or_load) "
        f"will not find a checkpoint. Write the newest good one into it: printf %s model_0000005.pth > {pointer}"]
    pointer.write_text("model_0000005.pth")  # as the warning says: fvcore resumes, verify is quiet
    assert FvcoreCheckpointer(torch.nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)["iteration"] == 5
    assert run_main(capsys, "verify", tmp_path)[0::2] == (0, "")


def test_verify_names_an_empty_file_and_a_torn_pickle(tmp_path, capsys):
    fvcore_run(tmp_path)
    (tmp_path / "model_0000003.pth").write_bytes(b"")  # an interrupted write
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "legacy.pt").read_bytes()
    cut = data.index(b"_rebuild_tensor") + len(b"_rebuild_tens") + 1  # the name is read up to its (missing) newline
    (tmp_path / "legacy.pt").write_bytes(data[:cut])  # cut inside a global's name
    code, stdout, err = run_main(capsys, "verify", tmp_path)
    assert (code, err) == (1, "")
    bad = sorted(line for line in stdout.splitlines() if "BAD" in line)
    assert bad == [
        f"{'legacy.pt':24s}  BAD: legacy.pt names a type that does not exist (torch._utils._rebuild_tens): a corrupt or truncated file",
        f"{'model_0000003.pth':24s}  BAD: model_0000003.pth: 0 bytes: an empty file (an interrupted write?)"]
    assert stdout.splitlines()[-1] == f"2 bad checkpoint(s) in {tmp_path}"
    code, _, err = run_main(capsys, "export", tmp_path / "model_0000003.pth", "--to", tmp_path / "w.pt")
    assert code == 2 and err.splitlines() == [
        f"trainer_ckpt: cannot load model_0000003.pth in {tmp_path}: model_0000003.pth: 0 bytes: an empty file (an interrupted write?)"]


def test_diff_counts_metadata_apart_and_names_the_largest_float_change(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    allennlp_pairs(a), allennlp_pairs(b)
    record = b / "checkpoint_e3_b0.json"
    record.write_text(record.read_text().replace('"python": "', '"python": "3.10.0-was-'))
    code, stdout, err = run_main(capsys, "diff", a, b)
    assert (code, err) == (0, ""), stdout
    lines = stdout.splitlines()
    assert lines[2].startswith("version  python: 3.") and " -> 3.10.0-was-3." in lines[2]
    assert lines[-1] == "the same state: only metadata (versions, world size, times) differs"
    # Adam's `step` (a whole-numbered float) and BatchNorm's num_batches_tracked change by 1: counters,
    # not the largest change, which is among the weights and moments.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    fvcore_run(tmp_path / "c", iterations=4, optimizer=torch.optim.Adam, model=model)
    code, stdout, err = run_main(capsys, "diff", tmp_path / "c" / "model_0000001.pth", tmp_path / "c" / "model_0000003.pth")
    assert (code, err) == (1, "")
    tensors = [line.split(": max abs diff ") for line in stdout.splitlines() if line.startswith("tensor ")]
    counters = sorted(k.split()[1] for k, v in tensors if v.endswith(" (a counter)"))
    assert counters == ["checkpoint.model.1.num_batches_tracked"] + [f"checkpoint.optimizer.state.{i}.step" for i in range(4)]
    floats = {k.split()[1]: float(v) for k, v in tensors if not v.endswith(" (a counter)")}
    largest = max(floats, key=floats.get)
    assert 0 < floats[largest] < 1 and largest.startswith(("checkpoint.model.", "checkpoint.optimizer.state."))
    assert stdout.splitlines()[-1].endswith(
        f" differ (largest max abs diff {floats[largest]:.6g} in {largest}) (counters: largest change 2 in checkpoint.optimizer.state.3.step)")


def test_export_of_an_unknown_name_says_how_many_it_shows(tmp_path, capsys):
    from trainer_ckpt.fvcore import Checkpointer as OurCheckpointer

    checkpointer = OurCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    for i in range(11):
        checkpointer.save(f"model_{i:07d}", iteration=i)
    code, _, err = run_main(capsys, "export", tmp_path, "--checkpoint", "model_9.pth", "--to", tmp_path / "w.pt")
    newest = ", ".join(f"model_{i:07d}.pth" for i in range(3, 11))
    assert code == 2 and err.splitlines() == [
        f"trainer_ckpt: no checkpoint named 'model_9.pth' in {tmp_path}, got {newest} (8 of 11 shown, the newest; "
        "ls lists them all). Use one of those, best or latest."]


WITHOUT_JSONNET = r"""
import sys
sys.modules["_jsonnet"] = None  # jsonnet is not installed: --policy takes JSON
from trainer_ckpt.cli.commands import _parse_policy, CommandError
print(type(_parse_policy('{"type": "most_recent_by_count", "count": 2}')).__name__)
print(type(_parse_policy("all")).__name__)
try:
    _parse_policy("{type: 'all'}")
except CommandError as e:
    print(e)
"""


def test_policy_takes_json_when_jsonnet_is_not_installed():
    out = subprocess.run([sys.executable, "-c", WITHOUT_JSONNET], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[:2] == ["KeepMostRecentByCount", "KeepAll"]
    assert lines[2].startswith("--policy is not JSON (jsonnet needs `pip install jsonnet`), got \"{type: 'all'}\": ")
