"""
Bit-exact resume of a plain PyTorch loop through trainer_ckpt.fvcore (scripts/plain_loop.py: an
MLP with dropout, Adam, torchdata's StatefulDataLoader with shuffle and random augmentation as a
checkpointable, 0 and 2 workers): killed with a real SIGKILL mid-run and resumed, once or twice in
one epoch, it ends with every weight and optimizer tensor equal to an uninterrupted run's, each
process having started at the iteration after its newest checkpoint's (a restart from 0 would end
the same: tests/_resume.py). The same for detectron2's plain_train_net.py loop
(scripts/detectron2_loop.py: an endless TrainingSampler, the loader built after the resume) with
its one line changed, `checkpointer.resumable(build_detection_train_loader, cfg)`.
"""
import signal
import warnings

import pytest
import torch

from scripts import detectron2_loop
from scripts.plain_loop import dataset, final_state, max_difference, run
from tests._resume import assert_same_state, assert_starts, resumed
from trainer_ckpt.data import ResumableLoader


def _assert_same_final_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for p in sa:
        for name in sa[p]:
            assert torch.equal(sa[p][name], sb[p][name]), (p, name)
    assert_same_state(a["loader"], b["loader"], "loader")  # the loader's position: sampler, workers' random state
    assert a["iteration"] == b["iteration"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}

    def final(workers):
        if workers not in runs:
            out = tmp_path_factory.mktemp(f"full{workers}")
            assert run(str(out), workers=workers) == 0
            runs[workers] = final_state(str(out))
        return runs[workers]

    return final


# Saves after iterations 4, 9, 14, ... (every 5th), keeping 2: the resumed run starts after the newest.
@pytest.mark.parametrize("workers", [0])  # with workers: the next test
def test_sigkill_and_resume_is_bit_exact(tmp_path, uninterrupted, workers):
    assert run(str(tmp_path), kill_at="37", workers=workers) == -signal.SIGKILL
    assert not (tmp_path / "model_final.pth").exists()
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000029.pth", "model_0000034.pth"]
    with resumed(tmp_path, at=35):
        assert run(str(tmp_path), workers=workers) == 0
    _assert_same_final_state(final_state(str(tmp_path)), uninterrupted(workers))


# 13 batches an epoch: iterations 13-25 are the second. Killed after 16 (between checkpoints) and
# after 19 (right after one): the second process starts at 15, the third at 20.
@pytest.mark.parametrize("workers", [0, 2])
def test_two_resumes_in_one_epoch_are_bit_exact(tmp_path, uninterrupted, workers):
    for _ in range(2):
        assert run(str(tmp_path), kill_at="16,19", workers=workers) == -signal.SIGKILL
    assert run(str(tmp_path), kill_at="16,19", workers=workers) == 0
    assert_starts(tmp_path, 0, 15, 20)
    _assert_same_final_state(final_state(str(tmp_path)), uninterrupted(workers))


@pytest.mark.parametrize("workers", [2])
def test_detectron2_plain_train_net_loop_resumes_bit_exact_with_one_line_changed(tmp_path, workers):
    """12 batches a pass over the data: iterations 12-23 are the second. Killed after 16 and 21."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert detectron2_loop.run(str(full), workers=workers) == 0
    for _ in range(2):
        assert detectron2_loop.run(str(cut), kill_at="16,21", workers=workers) == -signal.SIGKILL
    assert detectron2_loop.run(str(cut), kill_at="16,21", workers=workers) == 0
    assert_starts(cut, 0, 15, 20)
    assert max_difference(detectron2_loop.final_state(str(full)), detectron2_loop.final_state(str(cut))) == 0.0
    # The control: the script as written resumes its data from the start, and differs.
    written = tmp_path / "written"
    for _ in range(2):
        assert detectron2_loop.run(str(written), kill_at="16,21", workers=workers, as_written=True) == -signal.SIGKILL
    assert detectron2_loop.run(str(written), kill_at="16,21", workers=workers, as_written=True) == 0
    assert_starts(written, 0, 15, 20)
    assert max_difference(detectron2_loop.final_state(str(full)), detectron2_loop.final_state(str(written))) > 0.01


def _forever(loader):
    while True:
        yield from loader


def test_resumable_loader_goes_on_with_the_next_batch_and_leaves_the_global_rng_alone():
    full = _forever(ResumableLoader(dataset(40), batch_size=8, seed=5))
    expected = [next(full)[1].tolist() for _ in range(15)]  # 3 epochs of 5 batches
    cut = ResumableLoader(dataset(40), batch_size=8, seed=5)
    batches = _forever(cut)
    got = [next(batches)[1].tolist() for _ in range(7)]  # 1 epoch and 2 batches
    state = cut.state_dict()
    resumed = ResumableLoader(dataset(40), batch_size=8, seed=0)
    resumed.load_state_dict(state)
    before = torch.get_rng_state()
    batches = _forever(resumed)
    got += [next(batches)[1].tolist() for _ in range(8)]
    assert got == expected
    assert expected[:5] != expected[5:10]  # epochs are shuffled differently
    assert torch.equal(torch.get_rng_state(), before)


def test_resumable_loader_refuses_what_it_owns():
    with pytest.raises(ValueError, match=r"^ResumableLoader: sampler cannot be passed on, got \['sampler'\]\."):
        ResumableLoader(dataset(8), sampler=range(8))


def test_resumable_loader_given_a_position_saved_by_0_1_warns_and_starts_the_order_afresh():
    loader = ResumableLoader(dataset(16), batch_size=8, seed=5)
    fresh = [batch[1].tolist() for batch in ResumableLoader(dataset(16), batch_size=8, seed=5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader.load_state_dict({"epoch": 3, "batches": 1, "seed": 5})
    assert [str(w.message) for w in caught] == [
        "ResumableLoader: a position saved by trainer_ckpt 0.1 (epoch 3, batch 1), which 0.2's loader cannot go on "
        "from: the data order starts afresh."]
    assert [batch[1].tolist() for batch in loader] == fresh
