import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

# One thread per process, before torch is imported: the suite runs in 2 workers on 2 cores, and most
# tests start training processes, which inherit it. torch's default, a thread per core in each,
# oversubscribes the cores (an AllenNLP epoch took 20 s instead of 0.5 s under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from allennlp.common import Registrable  # noqa: E402
from allennlp.training.trainer import Trainer, TrainerCheckpoint  # noqa: E402

from trainer_ckpt.core.lock import LOCK_FILE  # noqa: E402
from trainer_ckpt import stores  # noqa: E402


class FakeTrainer(Trainer):
    """Five lines: all the checkpointer asks of a trainer."""

    def __init__(self, model_state, training_state):
        self._model_state, self._training_state = model_state, training_state

    def get_checkpoint_state(self) -> TrainerCheckpoint:
        return TrainerCheckpoint(self._model_state, self._training_state)


def trainer_at(epochs: int, batches: int, **extra) -> FakeTrainer:
    """A trainer whose state says where it is, with a tensor that encodes the same point."""
    weight = torch.full((3,), float(epochs * 1000 + batches))
    training = {"epochs_completed": epochs, "batches_in_epoch_completed": batches, **extra}
    return FakeTrainer({"weight": weight}, training)


class FakeClock:
    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def saved(directory, prefix: str = "") -> List[tuple]:
    """Progress points of the complete checkpoints in `directory`, oldest first."""
    return [f.progress for f in stores.CheckpointDir(str(directory), prefix).list(None).complete]


def names(*points, prefix: str = "", record: bool = True, rank=None) -> List[str]:
    """The file names of checkpoints at `points`: two state files and (ours) the JSON record."""
    kinds = (stores.MODEL, stores.TRAINING) + ((stores.RECORD,) if record else ())
    layout = stores.CheckpointDir("", prefix)
    return sorted(layout.name(kind, p, rank) for p in points for kind in kinds)


def listing(directory) -> List[str]:
    """The directory's files, but the writer's lock file, which stays for the directory's life."""
    return sorted(n for n in os.listdir(directory) if n != LOCK_FILE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def restore_registry():
    """Undo registrations made by a test, so a second run in the same process works."""
    before = {cls: dict(names) for cls, names in Registrable._registry.items()}
    yield
    for cls in list(Registrable._registry):
        if cls in before:
            Registrable._registry[cls] = type(Registrable._registry[cls])(before[cls])
        else:
            del Registrable._registry[cls]


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def endpoint():
    """A real S3-compatible server (moto's standalone server) on 127.0.0.1, for the whole session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("moto's server did not start")
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def bucket(endpoint, request):
    """A new bucket: (its s3:// URL prefix, storage_options, an s3fs filesystem on it)."""
    import s3fs

    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**options)
    name = f"b{secrets.token_hex(5)}"  # not `random`: tests restore saved random states, and names would repeat
    fs.mkdir(name)
    return f"s3://{name}", options, fs


# The longest files first: the suite runs a file per worker (scripts/run_tests.sh), and a long file
# started last would leave the other worker idle at the end.
SLOWEST_FIRST = ("test_exact_resume.py", "test_end_to_end.py", "test_preemption_allennlp.py", "test_sharded.py",
                 "test_preemption_fvcore.py", "test_remote.py", "test_preemption_mmengine.py", "test_preemption_ignite.py",
                 "test_mmengine_stateful_loader.py", "test_fvcore_exact_resume.py", "test_ignite_stateful_loader.py",
                 "test_lightning_sharded.py", "test_cli.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
