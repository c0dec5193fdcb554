"""
Bit-exact resume of a plain PyTorch loop through trainer_ckpt.fvcore (scripts/plain_loop.py: an
MLP with dropout, a shuffled ResumableLoader, Adam): killed with a real SIGKILL mid-run and resumed,
it ends with every weight and optimizer tensor equal to an uninterrupted run's, having resumed at
the iteration after its newest checkpoint's (a restart from 0 would end the same: tests/_resume.py).
"""
import signal

import pytest
import torch

from scripts.plain_loop import dataset, final_state, run
from tests._resume import resumed
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
    assert a["loader"] == b["loader"] and a["iteration"] == b["iteration"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert run(str(out)) == 0
    return final_state(str(out))


# Saves after iterations 4, 9, 14, ... (every 5th), keeping 2: the resumed run starts after the newest.
@pytest.mark.parametrize("kill_at, newest", [(37, 34), (19, 19)])  # between checkpoints; right after one
def test_sigkill_and_resume_is_bit_exact(tmp_path, uninterrupted, kill_at, newest):
    assert run(str(tmp_path), kill_at=kill_at) == -signal.SIGKILL
    assert not (tmp_path / "model_final.pth").exists()
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [f"model_{newest - 5:07d}.pth", f"model_{newest:07d}.pth"]
    with resumed(tmp_path, at=newest + 1):
        assert run(str(tmp_path)) == 0
    _assert_same_final_state(final_state(str(tmp_path)), uninterrupted)


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
    assert state == {"epoch": 1, "batches": 2, "seed": 5}
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
