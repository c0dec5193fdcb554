"""
Real `allennlp train` subprocesses on the shipped fixture (20 batches per epoch, 3 epochs),
interrupted by a real SIGKILL (fixtures/plugins/kill_switch.py) and resumed with `--recover`; each
recovered run is shown to have started at the checkpoint it should have (tests/_resume.py).
"""
import json
import os
import signal
from pathlib import Path

import pytest

from scripts.main_job import MAIN_CONFIG, allennlp_train, checkpoint_files
from tests._resume import assert_starts, resumed
from tests.conftest import ROOT, names

CUSTOM_INTERRUPTED = ROOT / "fixtures" / "configs" / "custom_policy_interrupted.jsonnet"


def finished(serialization_dir: Path, run) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    num_epochs = json.loads((serialization_dir / "config.json").read_text())["trainer"]["num_epochs"]
    assert json.loads((serialization_dir / "metrics.json").read_text())["epoch"] == num_epochs - 1
    assert (serialization_dir / "model.tar.gz").exists() and (serialization_dir / "best.th").exists()


def killed(run) -> None:
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]


def test_sigkill_mid_epoch_then_recover_keeps_what_an_uninterrupted_run_keeps(tmp_path):
    # every 5 batches and at epoch ends, keep 3
    full = tmp_path / "full"
    finished(full, allennlp_train(MAIN_CONFIG, full))

    out = tmp_path / "interrupted"
    killed(allennlp_train(MAIN_CONFIG, out, kill_at="1:12"))
    assert checkpoint_files(out) == names((1, 0), (1, 5), (1, 10))

    with resumed(out, at=(1, 10)):
        recovered = allennlp_train(MAIN_CONFIG, out, recover=True)
    finished(out, recovered)
    assert "Restoring checkpoint e1_b10" in (out / "out.log").read_text()
    assert checkpoint_files(out) == checkpoint_files(full) == names((2, 15), (2, 20), (3, 0))


def test_custom_policy_from_a_user_package_survives_a_kill(tmp_path):
    # after_warmup(warmup_epochs=1, num_batches=5) + epoch_ends_and_latest, from fixtures/plugins/my_policies.py
    packages = ("trainer_ckpt", "kill_switch", "my_policies")
    killed(allennlp_train(CUSTOM_INTERRUPTED, tmp_path, kill_at="1:12", packages=packages))
    assert checkpoint_files(tmp_path) == names((1, 0), (1, 10))
    with resumed(tmp_path, at=(1, 10)):
        finished(tmp_path, allennlp_train(CUSTOM_INTERRUPTED, tmp_path, recover=True, packages=packages))
    assert checkpoint_files(tmp_path) == names((1, 0), (2, 0), (3, 0))


def test_kill_during_the_first_epoch_and_recover_twice(tmp_path):
    killed(allennlp_train(MAIN_CONFIG, tmp_path, kill_at="0:7"))
    assert checkpoint_files(tmp_path) == names((0, 5))
    with resumed(tmp_path, at=(0, 5)):
        killed(allennlp_train(MAIN_CONFIG, tmp_path, recover=True, kill_at="2:1"))
    assert checkpoint_files(tmp_path) == names((1, 20), (2, 0), (1, 15))
    with resumed(tmp_path, at=(2, 0)):
        finished(tmp_path, allennlp_train(MAIN_CONFIG, tmp_path, recover=True))
    assert checkpoint_files(tmp_path) == names((2, 15), (2, 20), (3, 0))
    assert_starts(tmp_path, (0, 0), (0, 5), (2, 0))


EXPECTED_AFTER_TRAINING = {
    "epoch_saves": names((2, 0), (3, 0)),
    "every_n_batches_keep_3": names((2, 15), (2, 20), (3, 0)),
    "hourly_keep": names((1, 0), (2, 0), (3, 0)),  # the 3 newest (no hour has passed since the start)
    "allennlp_2_4_keys": names((2, 0), (3, 0)),  # 2 newest; no 2-hour window has passed since the start
    "custom_policy": names((1, 0), (2, 0), (3, 0)),
    "background_saves": names((2, 15), (2, 20), (3, 0)),
    "best_and_latest": None,  # depends on the accuracies: see below
    "best_and_periodic_group": None,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_AFTER_TRAINING))
def test_every_example_config_trains(tmp_path, name):
    config = ROOT / "training_configs" / f"{name}.jsonnet"
    out = tmp_path / "run"
    if name == "custom_policy":
        # The user package is loaded through a .allennlp_plugins file in the working directory.
        (tmp_path / ".allennlp_plugins").write_text("trainer_ckpt\nmy_policies\n")
        os.symlink(ROOT / "fixtures", tmp_path / "fixtures")
        run = allennlp_train(config, out, packages=(), cwd=tmp_path)
    else:
        run = allennlp_train(config, out, packages=("trainer_ckpt",))
    finished(out, run)
    if EXPECTED_AFTER_TRAINING[name] is not None:
        assert checkpoint_files(out) == EXPECTED_AFTER_TRAINING[name]
    elif name == "best_and_latest":
        best_two = sorted(validation_accuracies(out), key=lambda ea: (-ea[1], ea[0]))[:2]
        kept = {(e, 0) for e, _ in best_two} | {(4, 20), (5, 0)}
        assert checkpoint_files(out) == names(*kept)
    else:
        accuracies = validation_accuracies(out)
        bests = [e for e, a in accuracies if a > max([b for f, b in accuracies if f < e], default=-1)]
        best_two = sorted((e for e in bests), key=lambda e: -dict(accuracies)[e])[:2]
        assert checkpoint_files(out, ("", "best_")) == sorted(
            names((2, 20), (3, 0)) + names(*[(e, 0) for e in best_two], prefix="best_")
        )


def validation_accuracies(serialization_dir: Path):
    """[(epochs completed, validation accuracy)] from AllenNLP's metrics_epoch_*.json files."""
    return [
        (json.loads(p.read_text())["epoch"] + 1, json.loads(p.read_text())["validation_accuracy"])
        for p in sorted(serialization_dir.glob("metrics_epoch_*.json"))
    ]


BEST_INTERRUPTED = ROOT / "fixtures" / "configs" / "best_and_latest_interrupted.jsonnet"


def test_best_k_after_recover_is_what_an_uninterrupted_run_keeps(tmp_path):
    full, out = tmp_path / "full", tmp_path / "interrupted"
    finished(full, allennlp_train(BEST_INTERRUPTED, full))
    killed(allennlp_train(BEST_INTERRUPTED, out, kill_at="3:7"))
    with resumed(out, at=(3, 5)):  # saves at epoch ends and every 5 batches
        finished(out, allennlp_train(BEST_INTERRUPTED, out, recover=True))
    assert validation_accuracies(out) == validation_accuracies(full)
    assert checkpoint_files(out) == checkpoint_files(full)
    # The recovered run judged best-K from the records on disk, metrics included.
    for name in checkpoint_files(out):
        if name.startswith("checkpoint_") and name.endswith("_b0.json"):
            assert json.loads((out / name).read_text())["metrics"] == json.loads((full / name).read_text())["metrics"]


def test_example_configs_are_all_trained():
    assert set(EXPECTED_AFTER_TRAINING) == {p.stem for p in (ROOT / "training_configs").glob("*.jsonnet")}


ALLENNLP_DEFAULT = ROOT / "fixtures" / "configs" / "allennlp_default_interrupted.jsonnet"


def switch_checkpointer(serialization_dir: Path, config: Path) -> None:
    """What a user does to change checkpointers mid-run: AllenNLP's --recover insists that the
    run directory's config.json matches the config it is given."""
    from allennlp.common import Params

    params = Params.from_file(str(config)).as_dict(quiet=True)
    (serialization_dir / "config.json").write_text(json.dumps(params, indent=2))


@pytest.mark.parametrize(
    "first, then",
    [(ALLENNLP_DEFAULT, MAIN_CONFIG), (MAIN_CONFIG, ALLENNLP_DEFAULT)],
    ids=["allennlp_then_ours", "ours_then_allennlp"],
)
def test_a_run_directory_moves_between_allennlps_checkpointer_and_ours(tmp_path, first, then):
    killed(allennlp_train(first, tmp_path, kill_at="1:12"))
    ours_first = first == MAIN_CONFIG
    assert checkpoint_files(tmp_path) == names((1, 0), (1, 5), (1, 10), record=ours_first)
    switch_checkpointer(tmp_path, then)
    # Resumed, not restarted: a restarted run would also have trained and logged epoch 0 again.
    with resumed(tmp_path, at=(1, 10)):
        finished(tmp_path, allennlp_train(then, tmp_path, recover=True))
    final = names((2, 15), (2, 20), (3, 0), record=not ours_first)
    if ours_first:  # AllenNLP's retention deletes state files only; our records of those remain
        final = sorted(final + [f"checkpoint_e1_b{b}.json" for b in (0, 5, 10)])
    assert checkpoint_files(tmp_path) == final


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_data_loader_workers_outliving_a_killed_trainer_do_not_block_recover(tmp_path):
    config = ROOT / "fixtures" / "configs" / "workers_interrupted.jsonnet"
    children_file = tmp_path / "children.txt"
    out = tmp_path / "run"
    killed(allennlp_train(config, out, kill_at="1:12", env={"TRAINER_CKPT_CHILDREN_FILE": str(children_file)}))
    workers = [int(pid) for pid in children_file.read_text().split()]
    try:
        # Only the trainer was killed: its forked workers are still there when --recover starts.
        assert [pid for pid in workers if _alive(pid)], f"no worker outlived the trainer: {workers}"
        with resumed(out, at=(1, 10)):
            recovered = allennlp_train(config, out, recover=True)
        finished(out, recovered)
        assert "Restoring checkpoint e1_b10" in (out / "out.log").read_text()
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
