"""Never lose a good checkpoint: verify, fall back, quarantine; unsafe pickles; one writer."""
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from allennlp.common.checks import ConfigurationError

from tests.conftest import ROOT, listing, names, saved, trainer_at
from trainer_ckpt import DefaultCheckpointer, KeepAll


@pytest.fixture
def three(tmp_path):
    """A run directory with good checkpoints e1_b0, e2_b0, e3_b0."""
    checkpointer = DefaultCheckpointer(tmp_path, retention_policy=KeepAll())
    for e in (1, 2, 3):
        checkpointer.save_checkpoint(trainer_at(e, 0))
    checkpointer.close()
    return tmp_path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def restored_epoch(directory, **kwargs):
    return DefaultCheckpointer(directory, **kwargs).load_checkpoint().trainer_state["epochs_completed"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: truncate(d / "model_state_e3_b0.th"), r"model_state_e3_b0\.th has \d+ bytes, its record says \d+ \(truncated or overwritten\)"),
        (lambda d: truncate(d / "training_state_e3_b0.th"), r"training_state_e3_b0\.th has \d+ bytes"),
        (lambda d: flip_byte(d / "model_state_e3_b0.th"), r"model_state_e3_b0\.th has CRC32 [0-9a-f]{8}, its record says [0-9a-f]{8} \(its content changed\)"),
        (lambda d: flip_byte(d / "training_state_e3_b0.th"), r"training_state_e3_b0\.th has CRC32"),
    ],
    ids=["truncated_model", "truncated_training", "flipped_model", "flipped_training"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(three, damage, reason, caplog):
    damage(three)
    with caplog.at_level(logging.WARNING):
        assert restored_epoch(three) == 2
    assert caplog.records[0].levelname == "WARNING"
    assert caplog.records[0].getMessage().startswith(f"Checkpoint e3_b0 in {three} is not usable: ")
    assert re.search(reason, caplog.text)
    assert "Moved model_state_e3_b0.th, training_state_e3_b0.th, checkpoint_e3_b0.json into corrupt/" in caplog.text
    assert sorted(os.listdir(three / "corrupt")) == names((3, 0))
    assert saved(three) == [(1, 0), (2, 0)]


def test_find_latest_verifies_too_but_trusts_its_own_writes(three):
    fresh = DefaultCheckpointer(three, retention_policy=KeepAll())
    fresh.save_checkpoint(trainer_at(4, 0))
    flip_byte(three / "model_state_e4_b0.th")  # after this process wrote and checksummed it
    assert fresh.find_latest_checkpoint()[0].endswith("model_state_e4_b0.th")  # no second read
    assert DefaultCheckpointer(three).find_latest_checkpoint()[0].endswith("model_state_e3_b0.th")
    assert (three / "corrupt" / "model_state_e4_b0.th").exists()


def test_a_pair_without_record_is_verified_by_loading(three):
    (three / "checkpoint_e3_b0.json").unlink()  # as AllenNLP's checkpointer writes them
    assert restored_epoch(three) == 3
    (three / "checkpoint_e2_b0.json").unlink()
    truncate(three / "model_state_e3_b0.th", keep=0.9)
    assert restored_epoch(three) == 2
    assert sorted(os.listdir(three / "corrupt")) == ["model_state_e3_b0.th", "training_state_e3_b0.th"]


@pytest.mark.parametrize("record", ["{}", '{"files": {}}', "not JSON", '{"files": 3}', "[1]", '{"files": {"model_state": 7}}'],
                         ids=["no_files", "empty_files", "not_json", "files_not_a_map", "not_an_object", "file_not_an_object"])
@pytest.mark.parametrize("find", [False, True], ids=["load_checkpoint", "find_latest_checkpoint"])
def test_a_record_that_lists_no_files_is_no_proof_the_pair_is_whole(three, record, find):
    """A record without file sizes and checksums (or no JSON at all) verifies nothing: the pair is
    verified by loading, as one without a record; trusting it would hand out a truncated file."""
    truncate(three / "model_state_e3_b0.th", keep=0.9)
    (three / "checkpoint_e3_b0.json").write_text(record)
    if find:
        assert DefaultCheckpointer(three).find_latest_checkpoint()[0].endswith("model_state_e2_b0.th")
    else:
        assert restored_epoch(three) == 2
    assert sorted(os.listdir(three / "corrupt")) == names((3, 0))


def test_a_record_pointing_to_a_missing_file(three):
    (three / "model_state_e3_b0.th").unlink()
    assert restored_epoch(three) == 2
    assert sorted(os.listdir(three / "corrupt")) == ["checkpoint_e3_b0.json", "training_state_e3_b0.th"]


def test_leftover_temp_files_and_half_saves_are_removed(three):
    (three / ".model_state_e4_b0.th.tmp-999999999-0a0b0c0d").write_bytes(b"torn")
    (three / ".checkpoint_e4_b0.json.tmp-999999999-0a0b0c0d").write_bytes(b"{")
    (three / "model_state_e4_b0.th").write_bytes((three / "model_state_e3_b0.th").read_bytes())
    assert restored_epoch(three) == 3
    assert listing(three) == names((1, 0), (2, 0), (3, 0))


def test_nothing_good_is_a_clear_error_listing_what_was_found(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path)
    for e in (1, 2):
        checkpointer.save_checkpoint(trainer_at(e, 0))
    truncate(tmp_path / "model_state_e1_b0.th")
    flip_byte(tmp_path / "training_state_e2_b0.th")
    with pytest.raises(RuntimeError, match=(
        rf"trainer_ckpt checkpointer: no usable checkpoint in {tmp_path}, got 2 bad one\(s\): "
        r"e2_b0 \(training_state_e2_b0\.th has CRC32 .*\); e1_b0 \(model_state_e1_b0\.th has \d+ bytes.*\)\. "
        rf"Their files are in {tmp_path}/corrupt; start a new run, or restore a good copy of one of them\."
    )):
        DefaultCheckpointer(tmp_path).load_checkpoint()
    assert len(os.listdir(tmp_path / "corrupt")) == 6  # moved, not deleted


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/trainer_ckpt_pwned"


def test_a_malicious_pickle_is_refused_and_nothing_in_it_runs(three):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    torch.save({"epochs_completed": 3, "batches_in_epoch_completed": 0, "evil": Payload()}, three / "training_state_e3_b0.th")
    (three / "checkpoint_e3_b0.json").unlink()
    with pytest.raises(ConfigurationError, match=(
        r"checkpoint e3_b0 in .* holds types that are not allowed to load, got: training_state_e3_b0\.th: "
        r"Trying to load unsupported GLOBAL posix\.system whose module posix is blocked\. "
        r"Nothing in it was run\. If you trust this file, list those types in the checkpointer's `safe_globals`"
    )):
        DefaultCheckpointer(three).load_checkpoint()
    assert not os.path.exists(MARKER)
    assert (three / "training_state_e3_b0.th").exists()  # refused, not moved: it is not damaged


def test_trusted_types_are_allowed_explicitly(tmp_path):
    import my_policies

    state = {"epochs_completed": 1, "batches_in_epoch_completed": 0, "policy": my_policies.KeepEvenEpochs()}
    DefaultCheckpointer(tmp_path).save_checkpoint(trainer_at(1, 0, extra=state["policy"]))
    with pytest.raises(ConfigurationError, match="not allowed to load"):
        DefaultCheckpointer(tmp_path).load_checkpoint()
    loaded = DefaultCheckpointer(tmp_path, safe_globals=["my_policies.KeepEvenEpochs"]).load_checkpoint()
    assert isinstance(loaded.trainer_state["extra"], my_policies.KeepEvenEpochs)


HOLDER = """
import sys, time
from trainer_ckpt import DefaultCheckpointer
DefaultCheckpointer(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_one_writer_per_directory(three):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(three)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigurationError, match=(
            rf"serialization directory {three}/ is in use by another training process, got its lock held by pid {holder.pid}\. "
        )):
            DefaultCheckpointer(str(three) + "/")
        # Reading needs no lock.
        reader = DefaultCheckpointer(three, read_only=True)
        assert reader.load_checkpoint().trainer_state["epochs_completed"] == 3
        with pytest.raises(RuntimeError, match="read-only"):
            reader.save_checkpoint(trainer_at(4, 0))
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    DefaultCheckpointer(three).save_checkpoint(trainer_at(4, 0))
    assert saved(three)[-1] == (4, 0)


FORKING_HOLDER = """
import os, signal, sys, time
from trainer_ckpt import DefaultCheckpointer
DefaultCheckpointer(sys.argv[1])
child = os.fork()
if child == 0:
    os.close(1), os.close(2)  # so the test reading our output is not kept waiting
    time.sleep(60)  # a worker that outlives its parent
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_does_not_keep_the_writer_lock(three):
    holder = subprocess.run([sys.executable, "-c", FORKING_HOLDER, str(three)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert holder.returncode == -9, holder.stderr
    worker = int(holder.stdout.split()[0])
    try:
        os.kill(worker, 0)  # still alive
        DefaultCheckpointer(three).save_checkpoint(trainer_at(4, 0))
        assert saved(three)[-1] == (4, 0)
    finally:
        os.kill(worker, 9)
