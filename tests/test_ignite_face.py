"""
trainer_ckpt.ignite beyond ignite's own tests (tests/test_ignite_peer.py): interchangeable with
ignite 0.5.5 both ways, durable saves that never leave a run without a checkpoint, verification and
fall-back, safe loading, background saves, our policies, and bit-exact resume of an Engine run.
"""
import os
import signal

import ignite.handlers as peer
import pytest
import torch
from ignite.engine import Engine, Events

from scripts import ignite_loop
from scripts.plain_loop import max_difference
from tests._resume import resumed
from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint
from trainer_ckpt.retention_policies import KeepMostRecentByCount
from trainer_ckpt.save_policies import SaveEveryNumSeconds
from trainer_ckpt.io import loading


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def make_run(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(engine, batch):
        optimizer.zero_grad()
        model(batch).pow(2).sum().backward()
        optimizer.step()

    trainer = Engine(step)
    return model, optimizer, trainer, {"model": model, "optimizer": optimizer, "trainer": trainer}


DATA = [torch.full((2, 3), float(i)) / 10 for i in range(4)]


def assert_same_states(a, b):
    for key in a.state_dict():
        torch.testing.assert_close(a.state_dict()[key], b.state_dict()[key], rtol=0, atol=0)


def test_same_files_and_contents_as_ignite(tmp_path):
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    for module, directory in ((__import__("trainer_ckpt.ignite").ignite, ours_dir), (peer, theirs_dir)):
        model, optimizer, trainer, to_save = make_run()
        handler = module.Checkpoint(to_save, module.DiskSaver(directory), n_saved=2)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), handler)
        trainer.run(DATA, max_epochs=3)
    assert visible(ours_dir) == visible(theirs_dir) == ["checkpoint_12.pt", "checkpoint_9.pt"]
    for name in visible(ours_dir):
        ours = torch.load(ours_dir / name, weights_only=True)
        theirs = torch.load(theirs_dir / name, weights_only=True)
        assert ours.keys() == theirs.keys() == {"model", "optimizer", "trainer"}
        for key in ours["model"]:
            assert torch.equal(ours["model"][key], theirs["model"][key])
        assert ours["trainer"] == theirs["trainer"]


@pytest.mark.parametrize("writer", ["ours", "ignite"])
def test_each_loads_the_others_files(tmp_path, writer):
    model, optimizer, trainer, to_save = make_run()
    module = __import__("trainer_ckpt.ignite").ignite if writer == "ours" else peer
    trainer.add_event_handler(Events.EPOCH_COMPLETED, module.Checkpoint(to_save, module.DiskSaver(tmp_path)))
    trainer.run(DATA, max_epochs=2)
    path = tmp_path / "checkpoint_8.pt"
    reader = peer if writer == "ours" else __import__("trainer_ckpt.ignite").ignite
    model2, optimizer2, trainer2, to_load = make_run(seed=1)
    reader.Checkpoint.load_objects(to_load, str(path))
    assert_same_states(model2, model)
    assert trainer2.state.iteration == 8 and trainer2.state.epoch == 2
    torch.testing.assert_close(optimizer2.state_dict()["state"][0]["momentum_buffer"],
                               optimizer.state_dict()["state"][0]["momentum_buffer"], rtol=0, atol=0)
    if writer == "ignite":  # ignite's files have no record: ours find them too
        assert latest_checkpoint(tmp_path) == str(path)


class Unpicklable:
    def state_dict(self):
        return {"f": lambda: None}  # torch.save fails on it


def test_a_failed_save_keeps_the_checkpoint_it_would_replace(tmp_path):
    """ignite deletes the old checkpoint before saving the new one (n_saved=1): a save that fails
    or a kill in between leaves the run with none. Ours deletes it only once the new one is committed."""
    for module, directory in ((__import__("trainer_ckpt.ignite").ignite, tmp_path / "ours"), (peer, tmp_path / "theirs")):
        model, optimizer, trainer, to_save = make_run()
        broken = {"extra": None}
        handler = module.Checkpoint({**to_save, "extra": _Switch(broken)}, module.DiskSaver(directory))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: broken.update(extra=Unpicklable()))
        with pytest.raises(Exception):
            trainer.run(DATA, max_epochs=2)
    assert visible(tmp_path / "ours") == ["checkpoint_4.pt"]
    assert visible(tmp_path / "theirs") == []  # ignite lost its only checkpoint


class _Switch:
    def __init__(self, holder):
        self.holder = holder

    def state_dict(self):
        return {} if self.holder["extra"] is None else self.holder["extra"].state_dict()

    def load_state_dict(self, state):
        pass


def test_latest_checkpoint_skips_a_truncated_newest_with_a_warning(tmp_path, caplog):
    model, optimizer, trainer, to_save = make_run()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(to_save, DiskSaver(tmp_path), n_saved=3))
    trainer.run(DATA, max_epochs=3)
    newest = tmp_path / "checkpoint_12.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_8.pt")
    assert "Checkpoint checkpoint_12.pt" in caplog.text and "Falling back to an older checkpoint" in caplog.text
    with pytest.raises(loading.BadCheckpoint, match=r"checkpoint_12.pt is not usable, got: .*latest_checkpoint"):
        Checkpoint.load_objects(make_run()[3], str(newest))
    assert latest_checkpoint(tmp_path, filename_prefix="best") is None


def test_temp_files_of_a_killed_save_are_removed_at_the_next_start(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    leftover = tmp_path / f".checkpoint_4.pt.tmp-{dead}-0123abcd"
    leftover.write_bytes(b"partial")
    model, optimizer, trainer, to_save = make_run()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(to_save, DiskSaver(tmp_path, require_empty=False)))
    trainer.run(DATA, max_epochs=1)
    assert not leftover.exists()
    assert visible(tmp_path) == ["checkpoint_4.pt"]


def test_unsafe_pickles_are_refused_unless_allowed(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "x": KeepMostRecentByCount(1)}, tmp_path / "checkpoint_1.pt")
    holder = {"model": torch.nn.Linear(1, 1)}
    with pytest.raises(loading.UnsafeCheckpoint, match=r"holds types that are not allowed to load, got: .*KeepMostRecentByCount.*safe_globals"):
        Checkpoint.load_objects(holder, str(tmp_path / "checkpoint_1.pt"))


def test_background_saves_write_the_same_files(tmp_path):
    model, optimizer, trainer, to_save = make_run()
    saver = DiskSaver(tmp_path / "bg", background=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=2), Checkpoint(to_save, saver, n_saved=2))
    trainer.run(DATA, max_epochs=2)
    saver.wait()
    assert visible(tmp_path / "bg") == ["checkpoint_6.pt", "checkpoint_8.pt"]
    state = torch.load(tmp_path / "bg" / "checkpoint_8.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    assert latest_checkpoint(tmp_path / "bg") == str(tmp_path / "bg" / "checkpoint_8.pt")


def test_save_and_retention_policies_with_an_injected_clock(tmp_path):
    now = [0.0]
    model, optimizer, trainer, to_save = make_run()
    saver = DiskSaver(tmp_path, clock=lambda: now[0])
    handler = Checkpoint(to_save, saver, save_policy=SaveEveryNumSeconds(10), retention_policy=KeepMostRecentByCount(2))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: now.__setitem__(0, now[0] + 4))
    # 12 iterations; iteration i ends at 4 (i - 1) s: saves after iterations 4, 7, 10 (12, 24, 36 s).
    trainer.run(DATA, max_epochs=3)
    assert visible(tmp_path) == ["checkpoint_10.pt", "checkpoint_7.pt"]
    assert [item.filename for item in handler._saved] == ["checkpoint_7.pt", "checkpoint_10.pt"]
    assert handler.last_checkpoint == tmp_path / "checkpoint_10.pt"


def test_bad_keywords_are_refused_at_construction(tmp_path):
    to_save = make_run()[3]
    with pytest.raises(ValueError, match=r"^trainer_ckpt.ignite.Checkpoint: give at most one of `n_saved` and `retention_policy`"):
        Checkpoint(to_save, str(tmp_path), n_saved=3, retention_policy=KeepMostRecentByCount(2))
    with pytest.raises(ValueError, match=r"^trainer_ckpt.ignite.Checkpoint: `background` and `safe_globals` are for a DiskSaver"):
        Checkpoint(to_save, peer.DiskSaver(tmp_path), background=True)
    with pytest.raises(TypeError, match=r"`save_policy` must be a SavePolicy, got 3"):
        Checkpoint(to_save, str(tmp_path), save_policy=3)
    with pytest.raises(ValueError, match=r"`background` must be True or False, got 'yes'"):
        DiskSaver(tmp_path, background="yes")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}

    def get(deterministic):
        if deterministic not in runs:
            out = tmp_path_factory.mktemp("full")
            ignite_loop.train(str(out), deterministic=deterministic)  # in this process: no kill, no start-up
            runs[deterministic] = ignite_loop.final_state(str(out))
        return runs[deterministic]

    return get


# Both kills are mid-epoch (13 iterations an epoch): 37 between checkpoints, 20 right after one
# (saves every 5, keeping 2). Only the killed run needs a process of its own; the uninterrupted and
# the resumed run go on in this one.
@pytest.mark.parametrize("deterministic, kill_at, newest", [(False, 37, 35), (True, 20, 20)],
                         ids=["Engine+ResumableLoader", "DeterministicEngine+DataLoader"])
def test_sigkill_and_resume_of_an_engine_run_is_bit_exact(tmp_path, uninterrupted, deterministic, kill_at, newest):
    expected = uninterrupted(deterministic)
    assert ignite_loop.run(str(tmp_path), kill_at=kill_at, deterministic=deterministic) == -signal.SIGKILL
    assert not (tmp_path / "final.pth").exists()
    assert visible(tmp_path) == [f"checkpoint_{newest - 5}.pt", f"checkpoint_{newest}.pt", "starts.jsonl"]
    with resumed(tmp_path, at=newest):  # trains iteration newest + 1 first
        ignite_loop.train(str(tmp_path), deterministic=deterministic)
    got = ignite_loop.final_state(str(tmp_path))
    assert got["iteration"] == expected["iteration"] == 52
    assert max_difference(got, expected) == 0.0
    for key in expected["model"]:
        assert torch.equal(got["model"][key], expected["model"][key]), key


def test_background_buffers_are_allocated_after_the_first_iteration(tmp_path):
    """Off the training thread, once the optimizer's state exists: the first save only copies."""
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())

    def update(engine, batch):
        optimizer.zero_grad()
        model(torch.randn(2, 256)).sum().backward()
        optimizer.step()

    trainer = Engine(update)
    saver = DiskSaver(str(tmp_path), background=True)
    handler = Checkpoint({"model": model, "optimizer": optimizer, "trainer": trainer}, saver, n_saved=2)
    seen = {}

    def after_first(engine):
        saver.wait()
        seen.update({path: b.data_ptr() for path, b in saver.engine._snapshot._buffers.items()})

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), after_first)  # after ours (added first)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), handler)
    trainer.run(range(3), max_epochs=1)
    saver.wait()
    assert ("checkpoint", "model", "weight") in seen and ("checkpoint", "optimizer", "state", 0, "exp_avg") in seen
    assert {path: saver.engine._snapshot._buffers[path].data_ptr() for path in seen} == seen
    saved = torch.load(tmp_path / "checkpoint_3.pt", weights_only=True)
    assert torch.equal(saved["model"]["weight"], model.weight.detach())
