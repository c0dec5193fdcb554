"""
Saves in flight at once in one process: several checkpointers of several faces, background and
synchronous, on several threads, each writing exactly its own bytes. On a disk that takes O_DIRECT
(pytest's tmp_path on ext4 here): the direct path is where writers could share buffers; tmpfs
would hide it. `TRAINER_CKPT_STRESS_ROUNDS` sets the rounds (the suite runs 2; run it with 50 to soak).
"""
import json
import os
import threading

import torch
from ignite.engine import Engine as IgniteEngine

from tests.conftest import FakeTrainer
from trainer_ckpt import DefaultCheckpointer, KeepAll
from trainer_ckpt.io import fastio
from trainer_ckpt.fvcore import Checkpointer as FvcoreCheckpointer
from trainer_ckpt.ignite import Checkpoint, DiskSaver
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable

ROUNDS = int(os.environ.get("TRAINER_CKPT_STRESS_ROUNDS", "2"))
MIB = 1 << 20


class Blob(torch.nn.Module):
    """`mib` MiB of float64 whose every element says which writer and which round it belongs to."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(mib * MIB // 8, dtype=torch.float64), requires_grad=False)

    def fill(self, writer: int, round_: int) -> torch.Tensor:
        # Distinct in every element, writer and round: a chunk of another file or another place shows.
        value = torch.arange(self.w.numel(), dtype=torch.float64) + float((writer * 1000 + round_) << 32)
        self.w.copy_(value)
        return value


def fvcore_writer(directory, blob, background):
    checkpointer = FvcoreCheckpointer(blob, str(directory), background=background)

    def save(round_):
        checkpointer.save(f"model_{round_:07d}")

    def file(round_):
        return directory / f"model_{round_:07d}.pth", lambda state: state["model"]["w"]

    return save, file, checkpointer.wait


def ignite_writer(directory, blob, background):
    saver = DiskSaver(str(directory), background=background)
    handler = Checkpoint({"model": blob}, saver, n_saved=None)
    engine = IgniteEngine(lambda e, b: None)

    def save(round_):
        engine.state.iteration = round_
        handler(engine)

    def file(round_):
        return directory / f"model_{round_}.pt", lambda state: state["w"]

    return save, file, getattr(saver, "wait", lambda: None)


def allennlp_writer(directory, blob, background):
    checkpointer = DefaultCheckpointer(directory, background=background, retention_policy=KeepAll())

    def save(round_):
        trainer = FakeTrainer(blob.state_dict(), {"epochs_completed": round_, "batches_in_epoch_completed": 0})
        checkpointer.save_checkpoint(trainer)

    def file(round_):
        return directory / f"model_state_e{round_}_b0.th", lambda state: state["w"]

    return save, file, checkpointer.wait


def run_at_once(writers, rounds):
    """Each writer saves `rounds` times on its own thread, all starting each round together;
    after each save, its model changes in place at once (a background snapshot must not see it)."""
    barrier, errors, expected = threading.Barrier(len(writers)), [], {}

    def work(index, save, blob, file):
        try:
            for round_ in range(1, rounds + 1):
                value = blob.fill(index, round_)
                expected[file(round_)[0]] = (value, file(round_)[1])
                barrier.wait()
                save(round_)
                blob.w.add_(0.5)  # the next step, while a background save may still be writing
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, w[0], w[1], w[2])) for i, w in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for w in writers:
        w[3]()  # wait for background saves
    assert not errors, errors
    return expected


def check_files(expected):
    """Every file: its bytes match its record's CRC32, and it holds exactly the state it was given."""
    assert expected
    for path, (value, tensor_of) in expected.items():
        record = json.loads((path.parent / f".{path.name}.json").read_text()) if not path.name.startswith("model_state") \
            else json.loads((path.parent / path.name.replace("model_state", "checkpoint").replace(".th", ".json")).read_text())
        info = next(f for f in record["files"].values() if f["name"] == path.name)
        loading.verify(str(path), info)  # raises BadCheckpoint on another writer's bytes
        loaded = tensor_of(torch.load(path, map_location="cpu", weights_only=True))
        assert torch.equal(loaded, value), path


def test_many_checkpointers_of_several_faces_on_threads_write_their_own_bytes(tmp_path):
    assert fastio.direct_io(str(tmp_path)), "this test needs a disk that takes O_DIRECT (not tmpfs)"
    writers = []
    for index, (make, background) in enumerate([
        (fvcore_writer, True), (fvcore_writer, False), (ignite_writer, True),
        (ignite_writer, False), (allennlp_writer, True), (allennlp_writer, False),
    ]):
        directory = tmp_path / f"{make.__name__}{index}"
        directory.mkdir()
        blob = Blob(24)  # more than one 16 MiB bounce buffer per file
        save, file, wait = make(directory, blob, background)
        writers.append((save, blob, file, wait))
    check_files(run_at_once(writers, ROUNDS))


def test_a_periodic_background_and_a_best_checkpointer_on_one_model(tmp_path):
    """The shape of a periodic and a "best" checkpointer (CheckpointerGroup, two ignite handlers):
    one model, one in the background and one synchronous, saving the same round back to back."""
    assert fastio.direct_io(str(tmp_path))
    blob = Blob(40)
    periodic = FvcoreCheckpointer(blob, str(tmp_path / "periodic"), background=True)
    best = FvcoreCheckpointer(blob, str(tmp_path / "best"), background=False)
    expected = {}
    for round_ in range(1, ROUNDS + 2):
        value = blob.fill(0, round_)
        periodic.save(f"model_{round_:07d}")
        best.save(f"model_{round_:07d}")  # while the periodic one is being written
        for kind in ("periodic", "best"):
            expected[tmp_path / kind / f"model_{round_:07d}.pth"] = (value, lambda state: state["model"]["w"])
        blob.w.add_(0.5)
    periodic.wait()
    check_files(expected)


def test_bounce_buffers_are_leased_one_file_at_a_time_within_a_bound(tmp_path):
    pool = fastio.BouncePool(2)
    first, second = pool.lease(), pool.lease()
    assert first is not None and second is not None and first[0] is not second[0]
    assert pool.lease() is None  # the bound: a third file at once goes through the page cache
    pool.give_back(first)
    again = pool.lease()
    assert again is first  # reused, not made anew
    # Beyond the process's bound, files are still written whole and right (buffered).
    leases = [fastio._BOUNCE.lease() for _ in range(fastio._BOUNCE.limit)]
    try:
        info = durable.atomic_save({"x": torch.arange(5 << 20)}, str(tmp_path / "f.th"))
    finally:
        for lease in leases:
            if lease is not None:
                fastio._BOUNCE.give_back(lease)
    loading.verify(str(tmp_path / "f.th"), info)
    assert torch.equal(loading.load(str(tmp_path / "f.th"))["x"], torch.arange(5 << 20))


def test_torch_settings_come_back_after_saves_and_loads_of_several_threads(tmp_path):
    """The zip CRC32 setting and the safe-globals list are changed while saves and loads of ours
    are in flight and put back by the last one: threads never undo each other's."""

    class Mine:
        pass

    torch.serialization.set_crc32_options(True)
    before = set(torch.serialization.get_safe_globals())
    numpy_types = loading.numpy_types()
    import numpy

    path = str(tmp_path / "np.th")
    durable.atomic_save({"a": numpy.arange(3)}, path)
    errors, barrier = [], threading.Barrier(4)

    def work(i):
        try:
            barrier.wait()
            for n in range(20):
                durable.atomic_save({"x": torch.full((1000,), float(i))}, str(tmp_path / f"t{i}_{n % 2}.th"))
                with loading.allowing(numpy_types + ([Mine] if i % 2 else [])):
                    assert numpy.array_equal(loading.load(path)["a"], numpy.arange(3))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert torch.serialization.get_crc32_options() is True
    assert set(torch.serialization.get_safe_globals()) == before


def test_mmengine_patches_route_per_thread_and_are_not_swapped_per_save(tmp_path):
    """The mmengine face replaces mmengine's module-level `save_checkpoint` once; a save of our
    hook routes it on its own thread only, while another thread gets mmengine's own."""
    import mmengine.runner.runner as runner_module

    from trainer_ckpt.faces._mmengine import patches

    installed, seen = runner_module.save_checkpoint, []
    inside, release = threading.Event(), threading.Event()

    def hook_saving():  # what `CheckpointHook._saving` does on the training thread
        patches.ROUTE.save = lambda *args, **kwargs: seen.append(args[1])
        try:
            runner_module.save_checkpoint({}, "ours.pth")
            inside.set()
            release.wait(30)
        finally:
            patches.ROUTE.save = None

    thread = threading.Thread(target=hook_saving)
    thread.start()
    assert inside.wait(30)
    runner_module.save_checkpoint({"a": torch.ones(2)}, str(tmp_path / "plain.pth"))  # another runner's, meanwhile
    release.set()
    thread.join()
    assert seen == ["ours.pth"]
    assert torch.equal(torch.load(tmp_path / "plain.pth", weights_only=True)["a"], torch.ones(2))
    assert runner_module.save_checkpoint is installed
