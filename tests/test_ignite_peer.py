"""pytorch-ignite's own tests of ``Checkpoint`` and ``DiskSaver``, run against a drop-in replacement.

Source: ``tests/ignite/handlers/test_checkpoint.py`` of pytorch/ignite, tag v0.5.5. Every test keeps
ignite's name (with a ``[disk_saver]`` parameter where one ignite test became two), so it can be traced.
The module under test is picked by ``TRAINER_CKPT_IGNITE_UNDER_TEST`` (default ``trainer_ckpt.ignite``);
``TRAINER_CKPT_IGNITE_UNDER_TEST=ignite.handlers`` runs the same tests against ignite itself.

Changes made in the adaptation, and why:

- Dropped the distributed, Horovod, TPU/XLA and multi-process tests (gloo/nccl/ddp/ZeRO, ``save_on_rank``):
  this suite runs in one CPU process. Dropped ``test_model_checkpoint_invalid_save_handler`` and the
  ``h(None, [])`` check: they test ``ModelCheckpoint`` only, which is not part of the face.
- Tests that went through ``ModelCheckpoint(dirname, prefix, ...)`` now build what ModelCheckpoint builds
  internally, ``Checkpoint(to_save, DiskSaver(dirname, atomic, create_dir, require_empty), prefix, ...)``
  (``disk_checkpoint`` below), so they test our Checkpoint and DiskSaver on a real disk.
- ``MagicMock(spec=BaseSaveHandler)`` became ``RecordingSaver``, a real ``BaseSaveHandler`` that records
  ``(checkpoint, filename, metadata)`` per save and each removal; it asserts on the last call as
  ``assert_called_with`` did.
- Directory listings compare only non-hidden names (``visible``): our DiskSaver keeps hidden sidecar files
  (a JSON record, RNG state) and hidden temp files next to each checkpoint.
- ``==`` on state dicts became ``assert_same`` (exact tensor comparison via ``torch.testing.assert_close``
  with zero tolerance, recursing through dicts and lists); files are read with ``torch.load(..., weights_only=True)``.
  A few tests now also check the exact saved file names and contents, where ignite only checked existence.
- Where ignite's ``load_objects`` round trips loaded an object's own state back into it (which cannot
  fail), the state also goes into fresh objects, compared with the saved ones.
- ``dirname`` is a fresh directory from ``tmp_path``, as ignite's conftest fixture is.
- One deliberate difference is asserted: with ``atomic=False`` a failed save leaves a partial file in
  ignite and nothing with trainer_ckpt (``test_disk_saver_atomic``), whose writes are always atomic.
"""

import copy
import importlib
import os
import stat
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ignite.engine import Engine, Events, State
from ignite.handlers import EarlyStopping, global_step_from_engine
from ignite.handlers.checkpoint import BaseSaveHandler

ig = importlib.import_module(os.environ.get("TRAINER_CKPT_IGNITE_UNDER_TEST", "trainer_ckpt.ignite"))
Checkpoint, DiskSaver = ig.Checkpoint, ig.DiskSaver

_PREFIX = "PREFIX"


# --------------------------------------------------------------------------------------------------
# Helpers of the adaptation
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def dirname(tmp_path):
    path = tmp_path / "dirname"
    path.mkdir()
    return path


def visible(dirname):
    return sorted(n for n in os.listdir(dirname) if not n.startswith("."))


def assert_same(actual, expected, where="checkpoint"):
    """What ``actual == expected`` meant in ignite's tests, with tensors compared exactly."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: {type(actual)} is not a tensor"
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"{where}: {m}")
    elif isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{where}: {type(actual)} is not a mapping"
        if isinstance(actual, OrderedDict) and isinstance(expected, OrderedDict):
            assert list(actual.keys()) == list(expected.keys()), where
        else:
            assert sorted(map(repr, actual.keys())) == sorted(map(repr, expected.keys())), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) == isinstance(expected, list), f"{where}: {type(actual)}"
        assert isinstance(actual, tuple) == isinstance(expected, tuple), f"{where}: {type(actual)}"
        assert len(actual) == len(expected), f"{where}: {actual!r} vs {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} vs {expected!r}"


class RecordingSaver(BaseSaveHandler):
    """A save handler that records what Checkpoint asks of it (ignite used MagicMock(spec=BaseSaveHandler))."""

    def __init__(self):
        self.calls = []  # (checkpoint, filename, metadata), in call order
        self.removed = []  # filenames, in call order

    def __call__(self, checkpoint, filename, metadata=None):
        self.calls.append((checkpoint, filename, metadata))

    def remove(self, filename):
        self.removed.append(filename)

    @property
    def call_count(self):
        return len(self.calls)

    def assert_called_with(self, checkpoint, filename, metadata):
        assert self.calls, "save handler was never called"
        last_checkpoint, last_filename, last_metadata = self.calls[-1]
        assert last_filename == filename
        assert last_metadata == metadata
        assert_same(last_checkpoint, checkpoint)


def disk_checkpoint(to_save, dirname, filename_prefix="", atomic=True, require_empty=True, create_dir=True, **kwargs):
    """What ignite's ModelCheckpoint(dirname, filename_prefix, ...) builds inside: a Checkpoint on a DiskSaver."""
    saver = DiskSaver(dirname, atomic=atomic, create_dir=create_dir, require_empty=require_empty)
    return Checkpoint(to_save, saver, filename_prefix=filename_prefix, **kwargs)


def load(path):
    return torch.load(path, weights_only=True)


# --------------------------------------------------------------------------------------------------
# ignite's tests
# --------------------------------------------------------------------------------------------------


class DummyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 1)

    def forward(self, x):
        return self.net(x)


model = DummyModel()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


class DummyPretrainedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Linear(4, 2, bias=False)
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        x = self.features(x)
        x = self.fc(x)
        return x


def test_checkpoint_wrong_input():
    with pytest.raises(TypeError, match=r"Argument `to_save` should be a dictionary"):
        Checkpoint(12, lambda x: x, "prefix")

    with pytest.raises(TypeError, match=r"Argument `to_save` should be a dictionary"):
        Checkpoint([12], lambda x: x, "prefix")

    with pytest.raises(TypeError, match=r"should have `state_dict`"):
        Checkpoint({"model": {"abc": 12}}, lambda x: x, "prefix")

    to_save = {"model": model}

    with pytest.raises(
        TypeError,
        match=r"Argument `save_handler` should be a string or Path object or callable or inherit from BaseSaveHandler",
    ):
        Checkpoint(to_save, 12, "prefix")

    with pytest.raises(TypeError, match=r"global_step_transform should be a function."):
        Checkpoint(to_save, lambda x: x, score_function=lambda e: 123, score_name="acc", global_step_transform=123)

    with pytest.raises(ValueError, match=r"Cannot have key 'checkpointer' if `include_self` is True"):
        Checkpoint({"checkpointer": model}, lambda x: x, include_self=True)

    class ImmutableMapping(Mapping):
        def __init__(self, d):
            self._dict = d

        def __getitem__(self, key):
            return self._dict[key]

        def __iter__(self):
            return iter(self._dict)

        def __len__(self):
            return len(self._dict)

    with pytest.raises(TypeError, match="If `include_self` is True, then `to_save` must be mutable"):
        Checkpoint(ImmutableMapping(to_save), lambda x: x, include_self=True)

    checkpoint = Checkpoint(to_save, lambda x: x)
    with pytest.raises(AttributeError, match="Checkpoint's `save_handler` should be of type `DiskSaver`"):
        checkpoint.reload_objects(to_save)


def test_save_handler_as_str(dirname):
    to_save = {"model": model}

    checkpointer = Checkpoint(to_save, save_handler=dirname)
    assert isinstance(checkpointer.save_handler, DiskSaver)


def test_checkpoint_score_function_wrong_output():
    to_save = {"model": model}

    checkpointer = Checkpoint(to_save, lambda x: x, score_function=lambda e: {"1": 1}, score_name="acc")
    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)
    with pytest.raises(ValueError, match=r"Output of score_function should be a number"):
        checkpointer(trainer)


@pytest.mark.parametrize(
    "to_save, obj, name",
    [
        ({"model": model}, model.state_dict(), "model"),
        (
            {"model": model, "optimizer": optimizer},
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            "checkpoint",
        ),
    ],
)
def test_checkpoint_default(to_save, obj, name):
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(to_save, save_handler=save_handler)
    assert checkpointer.last_checkpoint is None

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    checkpointer(trainer)
    assert save_handler.call_count == 1

    metadata = {"basename": name, "score_name": None, "priority": 0}
    save_handler.assert_called_with(obj, f"{name}_0.pt", metadata)

    trainer.state.epoch = 12
    trainer.state.iteration = 1234
    checkpointer(trainer)
    assert save_handler.call_count == 2
    metadata["priority"] = 1234
    save_handler.assert_called_with(obj, f"{name}_1234.pt", metadata)
    assert save_handler.removed == [f"{name}_0.pt"]
    assert checkpointer.last_checkpoint == f"{name}_1234.pt"


@pytest.mark.parametrize(
    "to_save, obj, name",
    [
        ({"model": model}, model.state_dict(), "model"),
        (
            {"model": model, "optimizer": optimizer},
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            "checkpoint",
        ),
    ],
)
def test_checkpoint_include_self_state_dict(to_save, obj, name):
    obj = copy.copy(obj)  # ignite mutated the shared parameter in place
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(to_save, save_handler=save_handler, include_self=True)
    assert checkpointer.last_checkpoint is None

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    checkpointer(trainer)
    assert save_handler.call_count == 1

    fname = f"{name}_0.pt"
    obj["checkpointer"] = OrderedDict([("_saved", [(0, fname)])])

    metadata = {"basename": name, "score_name": None, "priority": 0}
    save_handler.assert_called_with(obj, fname, metadata)

    # Swap object, state should be maintained
    checkpointer2 = Checkpoint(to_save, save_handler=save_handler, include_self=True)
    checkpointer2.load_state_dict(checkpointer.state_dict())
    assert checkpointer2.last_checkpoint == fname

    trainer.state.epoch = 12
    trainer.state.iteration = 1234
    checkpointer2(trainer)
    assert save_handler.call_count == 2
    metadata["priority"] = 1234

    # This delete only happens if state was restored correctly.
    assert save_handler.removed[-1] == f"{name}_0.pt"

    fname = f"{name}_1234.pt"
    obj["checkpointer"] = OrderedDict([("_saved", [(1234, fname)])])

    save_handler.assert_called_with(obj, fname, metadata)
    assert len(save_handler.removed) == 1
    assert checkpointer2.last_checkpoint == fname


def test_checkpoint_with_dp():
    dp_model = nn.DataParallel(model)
    to_save = {"model": dp_model}

    save_handler = RecordingSaver()
    checkpointer = Checkpoint(to_save, save_handler=save_handler)

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    checkpointer(trainer)
    assert save_handler.call_count == 1
    metadata = {"basename": "model", "score_name": None, "priority": 0}
    save_handler.assert_called_with(model.state_dict(), "model_0.pt", metadata)


@pytest.mark.parametrize("filename_prefix", ["", "dummytask"])
@pytest.mark.parametrize(
    "to_save, obj, name",
    [
        ({"model": model}, model.state_dict(), "model"),
        (
            {"model": model, "optimizer": optimizer},
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            "checkpoint",
        ),
    ],
)
def test_checkpoint_with_global_step_transform(filename_prefix, to_save, obj, name):
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(
        to_save,
        save_handler=save_handler,
        filename_prefix=filename_prefix,
        global_step_transform=lambda e, _: e.state.epoch,
    )

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=2, iteration=1)

    checkpointer(trainer)
    assert save_handler.call_count == 1

    if len(filename_prefix) > 0:
        filename_prefix += "_"

    metadata = {"basename": f"{filename_prefix}{name}", "score_name": None, "priority": 2}
    save_handler.assert_called_with(obj, f"{filename_prefix}{name}_2.pt", metadata)

    trainer.state.epoch = 12
    trainer.state.iteration = 1234
    checkpointer(trainer)
    assert save_handler.call_count == 2
    metadata["priority"] = 12
    save_handler.assert_called_with(obj, f"{filename_prefix}{name}_12.pt", metadata)
    assert save_handler.removed == [f"{filename_prefix}{name}_2.pt"]
    assert checkpointer.last_checkpoint == f"{filename_prefix}{name}_12.pt"


@pytest.mark.parametrize(
    "to_save, obj, name",
    [
        ({"model": model}, model.state_dict(), "model"),
        (
            {"model": model, "optimizer": optimizer},
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            "checkpoint",
        ),
    ],
)
def test_checkpoint_with_score_function(to_save, obj, name):
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(to_save, save_handler=save_handler, score_function=lambda e: e.state.score)

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=1, iteration=1, score=0.77)

    checkpointer(trainer)
    assert save_handler.call_count == 1

    metadata = {"basename": name, "score_name": None, "priority": 0.77}
    save_handler.assert_called_with(obj, f"{name}_0.7700.pt", metadata)

    trainer.state.epoch = 12
    trainer.state.iteration = 1234
    trainer.state.score = 0.78

    checkpointer(trainer)
    assert save_handler.call_count == 2
    metadata["priority"] = 0.78
    save_handler.assert_called_with(obj, f"{name}_0.7800.pt", metadata)
    assert save_handler.removed == [f"{name}_0.7700.pt"]
    assert checkpointer.last_checkpoint == f"{name}_0.7800.pt"


def test_checkpoint_with_score_name_only():
    to_save = {"model": model}
    obj = model.state_dict()
    name = "model"
    save_handler = RecordingSaver()

    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    trainer.state = State(epoch=11, iteration=1)

    checkpointer = Checkpoint(
        to_save,
        save_handler=save_handler,
        global_step_transform=lambda _1, _2: trainer.state.epoch,
        score_name="val_acc",
    )

    evaluator.state = State(epoch=1, iteration=1000, metrics={"val_acc": 0.77})

    checkpointer(evaluator)
    assert save_handler.call_count == 1

    metadata = {"basename": name, "score_name": "val_acc", "priority": 0.77}
    save_handler.assert_called_with(obj, f"{name}_11_val_acc=0.7700.pt", metadata)

    trainer.state.epoch = 12
    evaluator.state.metrics["val_acc"] = 0.78

    checkpointer(evaluator)
    assert save_handler.call_count == 2
    metadata["priority"] = 0.78
    save_handler.assert_called_with(obj, f"{name}_12_val_acc=0.7800.pt", metadata)
    assert save_handler.removed == [f"{name}_11_val_acc=0.7700.pt"]
    assert checkpointer.last_checkpoint == f"{name}_12_val_acc=0.7800.pt"


@pytest.mark.parametrize(
    "to_save, obj, name",
    [
        ({"model": model}, model.state_dict(), "model"),
        (
            {"model": model, "optimizer": optimizer},
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            "checkpoint",
        ),
    ],
)
def test_checkpoint_with_score_name_and_function(to_save, obj, name):
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(
        to_save, save_handler=save_handler, score_name="loss", score_function=lambda e: e.state.score
    )

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=1, iteration=1, score=-0.77)

    checkpointer(trainer)
    assert save_handler.call_count == 1

    metadata = {"basename": name, "score_name": "loss", "priority": -0.77}
    save_handler.assert_called_with(obj, f"{name}_loss=-0.7700.pt", metadata)

    trainer.state.epoch = 12
    trainer.state.iteration = 1234
    trainer.state.score = -0.76

    checkpointer(trainer)
    assert save_handler.call_count == 2
    metadata["priority"] = -0.76
    save_handler.assert_called_with(obj, f"{name}_loss=-0.7600.pt", metadata)
    assert save_handler.removed == [f"{name}_loss=-0.7700.pt"]
    assert checkpointer.last_checkpoint == f"{name}_loss=-0.7600.pt"


def test_checkpoint_with_int_score():
    def _test(to_save, obj, name, score_name=None):
        save_handler = RecordingSaver()

        checkpointer = Checkpoint(
            to_save, save_handler=save_handler, score_name=score_name, score_function=lambda e: e.state.epoch
        )

        if score_name is None:
            score_name = ""
        else:
            score_name += "="

        trainer = Engine(lambda e, b: None)
        trainer.state = State(epoch=1, iteration=1)

        checkpointer(trainer)
        assert save_handler.call_count == 1

        metadata = {"basename": name, "score_name": score_name[:-1] if len(score_name) > 0 else None, "priority": 1}
        save_handler.assert_called_with(obj, f"{name}_{score_name}1.pt", metadata)

        trainer.state.epoch = 12
        trainer.state.iteration = 1234

        checkpointer(trainer)
        assert save_handler.call_count == 2
        metadata["priority"] = 12
        save_handler.assert_called_with(obj, f"{name}_{score_name}12.pt", metadata)
        assert save_handler.removed == [f"{name}_{score_name}1.pt"]
        assert checkpointer.last_checkpoint == f"{name}_{score_name}12.pt"

    model = DummyModel()
    to_save = {"model": model}
    _test(to_save, model.state_dict(), "model")
    _test(to_save, model.state_dict(), "model", "epoch")

    model = DummyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    to_save = {"model": model, "optimizer": optimizer}
    _test(to_save, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "checkpoint")
    _test(to_save, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "checkpoint", "epoch")


def test_checkpoint_with_score_function_and_trainer_epoch():
    to_save = {"model": model}
    obj = model.state_dict()
    name = "model"
    save_handler = RecordingSaver()

    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    trainer.state = State(epoch=11, iteration=1)

    checkpointer = Checkpoint(
        to_save,
        save_handler=save_handler,
        global_step_transform=lambda _1, _2: trainer.state.epoch,
        score_function=lambda e: e.state.metrics["val_acc"],
    )

    evaluator.state = State(epoch=1, iteration=1000, metrics={"val_acc": 0.77})
    checkpointer(evaluator)
    assert save_handler.call_count == 1

    metadata = {"basename": name, "score_name": None, "priority": 0.77}
    save_handler.assert_called_with(obj, f"{name}_11_0.7700.pt", metadata)

    trainer.state.epoch = 12
    evaluator.state.metrics["val_acc"] = 0.78

    checkpointer(evaluator)
    assert save_handler.call_count == 2
    metadata["priority"] = 0.78
    save_handler.assert_called_with(obj, f"{name}_12_0.7800.pt", metadata)
    assert save_handler.removed == [f"{name}_11_0.7700.pt"]
    assert checkpointer.last_checkpoint == f"{name}_12_0.7800.pt"


def test_checkpoint_with_score_name_and_function_and_trainer_epoch():
    to_save = {"model": model}
    obj = model.state_dict()
    name = "model"
    save_handler = RecordingSaver()

    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    trainer.state = State(epoch=11, iteration=1)

    checkpointer = Checkpoint(
        to_save,
        save_handler=save_handler,
        global_step_transform=lambda _1, _2: trainer.state.epoch,
        score_name="val_acc",
        score_function=lambda e: e.state.metrics["val_acc"],
    )

    evaluator.state = State(epoch=1, iteration=1000, metrics={"val_acc": 0.77})

    checkpointer(evaluator)
    assert save_handler.call_count == 1

    metadata = {"basename": name, "score_name": "val_acc", "priority": 0.77}
    save_handler.assert_called_with(obj, f"{name}_11_val_acc=0.7700.pt", metadata)

    trainer.state.epoch = 12
    evaluator.state.metrics["val_acc"] = 0.78

    checkpointer(evaluator)
    assert save_handler.call_count == 2
    metadata["priority"] = 0.78
    save_handler.assert_called_with(obj, f"{name}_12_val_acc=0.7800.pt", metadata)
    assert save_handler.removed == [f"{name}_11_val_acc=0.7700.pt"]
    assert checkpointer.last_checkpoint == f"{name}_12_val_acc=0.7800.pt"


def test_checkpoint_last_checkpoint():
    save_handler = RecordingSaver()
    to_save = {"model": DummyModel()}

    checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=None)

    trainer = Engine(lambda e, b: None)

    for i in range(10):
        trainer.state = State(epoch=1, iteration=i)
        checkpointer(trainer)

    assert save_handler.call_count == 10
    assert save_handler.removed == []
    assert checkpointer.last_checkpoint == "model_9.pt"


def test_checkpoint_last_checkpoint_on_score():
    save_handler = RecordingSaver()
    to_save = {"model": DummyModel()}

    checkpointer = Checkpoint(
        to_save,
        save_handler=save_handler,
        n_saved=None,
        score_name="val_acc",
        score_function=lambda e: e.state.metrics["val_acc"],
    )

    trainer = Engine(lambda e, b: None)

    val_acc = 0.0
    for i in range(10):
        val_acc = i * 0.1
        trainer.state = State(epoch=1, iteration=i, metrics={"val_acc": val_acc})
        checkpointer(trainer)

    assert save_handler.call_count == 10
    assert checkpointer.last_checkpoint == "model_val_acc=0.9000.pt"


def test_checkpoint_save_handler_callable():
    calls = []

    def save_handler(c, f):
        assert f == "model_12.pt"
        calls.append(f)

    to_save = {"model": DummyModel()}

    checkpointer = Checkpoint(to_save, save_handler=save_handler)

    trainer = Engine(lambda e, b: None)

    trainer.state = State(epoch=1, iteration=12)
    checkpointer(trainer)
    assert calls == ["model_12.pt"]


def test_model_checkpoint_args_validation(dirname):
    # ignite: the same arguments given to ModelCheckpoint, which hands them to DiskSaver and Checkpoint.
    existing = dirname / "existing_dir"
    nonempty = dirname / "nonempty"

    existing.mkdir(parents=True)
    nonempty.mkdir(parents=True)

    with open(nonempty / f"{_PREFIX}_name_0.pt", "w"):
        pass

    with pytest.raises(ValueError, match=r"with extension '.pt' are already present "):
        disk_checkpoint({"model": model}, nonempty, _PREFIX)

    with pytest.raises(ValueError, match=r"Directory path '\S+' is not found"):
        disk_checkpoint({"model": model}, dirname / "non_existing_dir", _PREFIX, create_dir=False)
    assert not (dirname / "non_existing_dir").exists()

    with pytest.raises(TypeError, match=r"global_step_transform should be a function"):
        disk_checkpoint({"model": model}, existing, _PREFIX, create_dir=False, global_step_transform=1234)

    h = disk_checkpoint({"model": model}, dirname, _PREFIX, create_dir=False)
    assert h.last_checkpoint is None


def test_model_checkpoint_simple_recovery(dirname):
    model = DummyModel()
    to_save = {"model": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False)
    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=1)

    h(engine)

    fname = h.last_checkpoint
    assert isinstance(fname, Path)
    assert str(dirname / _PREFIX) in str(fname)
    assert fname == dirname / f"{_PREFIX}_model_1.pt"
    assert fname.exists()
    loaded_objects = load(fname)
    assert_same(loaded_objects, model.state_dict())
    to_load = {"model": DummyModel()}
    h.reload_objects(to_load=to_load, global_step=1)
    assert_same(to_load["model"].state_dict(), model.state_dict())


@pytest.mark.parametrize("ext, require_empty", [(".txt", True), (".pt", False)])
def test_model_checkpoint_simple_recovery_from_existing_non_empty(ext, require_empty, dirname):
    previous_fname = dirname / f"{_PREFIX}_obj_{1}{ext}"
    with open(previous_fname, "w") as f:
        f.write("test")

    to_save = {"model": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=True, require_empty=require_empty)
    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=1)

    h(engine)

    fname = h.last_checkpoint
    ext = ".pt"
    assert isinstance(fname, Path)
    assert dirname / f"{_PREFIX}_model_{1}{ext}" == fname
    assert fname.exists()
    assert previous_fname.exists()
    with open(previous_fname) as f:
        assert f.read() == "test"
    loaded_objects = load(fname)
    assert_same(loaded_objects, model.state_dict())
    to_load = {"model": DummyModel()}
    h.reload_objects(to_load=to_load, global_step=1)
    assert_same(to_load["model"].state_dict(), model.state_dict())
    fname.unlink()


def test_disk_saver_atomic(dirname):
    model = DummyModel()
    to_save_serializable = {"model": model}
    to_save_non_serializable = {"model": lambda x: x}

    def _test_existence(atomic, _to_save, expected):
        saver = DiskSaver(dirname, atomic=atomic, create_dir=False, require_empty=False)
        fname = "test.pt"
        try:
            with warnings.catch_warnings():
                # Ignore torch/serialization.py:292: UserWarning: Couldn't retrieve source code for container of type
                # DummyModel. It won't be checked for correctness upon loading.
                warnings.simplefilter("ignore", category=UserWarning)
                saver(_to_save, fname)
        except Exception:
            pass
        fp = saver.dirname / fname
        assert fp.exists() == expected

        if expected:
            # related to https://github.com/pytorch/ignite/issues/1876
            mode = stat.filemode(fp.stat().st_mode)
            assert [mode[1], mode[4], mode[7]] == ["r", "r", "r"], mode

        if expected:
            saver.remove(fname)
            assert not fp.exists()
        assert visible(dirname) == []

    _test_existence(atomic=False, _to_save=to_save_serializable, expected=True)
    # A deliberate difference: ignite's non-atomic save leaves a partial file behind when it fails;
    # trainer_ckpt's DiskSaver always writes through a temp file, so a failed save leaves nothing.
    _test_existence(atomic=False, _to_save=to_save_non_serializable, expected=ig.__name__ == "ignite.handlers")

    _test_existence(atomic=True, _to_save=to_save_serializable, expected=True)
    _test_existence(atomic=True, _to_save=to_save_non_serializable, expected=False)


def test_disk_saver_zipfile_serialization_keyword(dirname):
    model = DummyModel()
    to_save = {"model": model}

    saver = DiskSaver(dirname, create_dir=False, _use_new_zipfile_serialization=False)
    fname = "test.pt"
    saver(to_save, fname)
    fp = saver.dirname / fname
    assert fp.exists()
    with open(fp, "rb") as f:
        assert f.read(4) != b"PK\x03\x04"  # the legacy format, not a zip archive
    saver.remove(fname)
    assert not fp.exists()


def test_disk_saver_unknown_keyword(dirname):
    model = DummyModel()
    to_save = {"model": model}

    saver = DiskSaver(dirname, create_dir=False, unknown_keyword="")
    fname = "test.pt"
    with pytest.raises(TypeError, match=r"got an unexpected keyword argument 'unknown_keyword'"):
        saver(to_save, fname)


def test_last_k(dirname):
    model = DummyModel()
    to_save = {"model": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=2)
    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=0)

    h(engine)

    for i in range(1, 9):
        engine.state.iteration = i
        h(engine)

    expected = [f"{_PREFIX}_model_{i}.pt" for i in [7, 8]]

    assert visible(dirname) == expected, f"{visible(dirname)} vs {expected}"


def test_disabled_n_saved(dirname):
    model = DummyModel()
    to_save = {"model": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=None)
    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=0)

    num_iters = 100
    for i in range(num_iters):
        engine.state.iteration = i
        h(engine)

    saved_files = visible(dirname)
    assert len(saved_files) == num_iters, f"{saved_files}"

    expected = sorted([f"{_PREFIX}_model_{i}.pt" for i in range(num_iters)])
    assert saved_files == expected, f"{saved_files} vs {expected}"


def test_best_k(dirname):
    scores = iter([1.2, -2.0, 3.1, -4.0])

    def score_function(_):
        return next(scores)

    model = DummyModel()
    to_save = {"model": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=2, score_function=score_function)

    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=0)

    for _ in range(4):
        h(engine)

    expected = [f"{_PREFIX}_model_{i:.4f}.pt" for i in [1.2, 3.1]]

    assert visible(dirname) == expected


def test_best_k_with_suffix(dirname):
    scores = [0.3456789, 0.1234, 0.4567, 0.134567]
    scores_iter = iter(scores)

    def score_function(engine):
        return next(scores_iter)

    model = DummyModel()
    to_save = {"model": model}
    h = disk_checkpoint(
        to_save, dirname, _PREFIX, create_dir=False, n_saved=2, score_function=score_function, score_name="val_loss"
    )

    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=0)

    for _ in range(4):
        engine.state.epoch += 1
        h(engine)

    expected = [f"{_PREFIX}_model_val_loss={scores[e - 1]:.4}.pt" for e in [1, 3]]

    assert visible(dirname) == expected


def test_removes_each_score_at_most_once(dirname):
    scores = [0, 1, 1, 2, 3]
    scores_iter = iter(scores)

    def score_function(_):
        return next(scores_iter)

    model = DummyModel()
    to_save = {"model": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=2, score_function=score_function)

    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=0)

    for _ in range(len(scores)):
        h(engine)

    # If a score was removed multiple times, the code above would have raise a
    # FileNotFoundError. So this just tests the absence of such a failure
    # without further assertions.
    assert visible(dirname) == [f"{_PREFIX}_model_2.pt", f"{_PREFIX}_model_3.pt"]


def test_with_engine(dirname):
    def update_fn(_1, _2):
        pass

    name = "model"
    engine = Engine(update_fn)
    model = DummyModel()
    to_save = {"model": model}
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=2)

    engine.add_event_handler(Events.EPOCH_COMPLETED, handler)
    engine.run([0, 1], max_epochs=4)

    expected = sorted([f"{_PREFIX}_{name}_{i}.pt" for i in [3 * 2, 4 * 2]])

    assert visible(dirname) == expected


def test_with_state_dict(dirname):
    def update_fn(_1, _2):
        pass

    engine = Engine(update_fn)
    model = DummyModel()
    to_save = {"model": model}
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)

    engine.add_event_handler(Events.EPOCH_COMPLETED, handler)
    engine.run([0, 1, 2], max_epochs=4)

    assert visible(dirname) == [f"{_PREFIX}_model_12.pt"]
    saved_model = dirname / visible(dirname)[0]
    load_model = load(saved_model)

    assert not isinstance(load_model, DummyModel)
    assert isinstance(load_model, dict)
    assert_same(load_model, model.state_dict())


def test_valid_state_dict_save(dirname):
    model = DummyModel()

    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=0, iteration=0)

    to_save = {"name": 42}
    # ignite's ModelCheckpoint checks `to_save` when called; Checkpoint checks it when built.
    with pytest.raises(TypeError, match=r"should have `state_dict` method"):
        disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)
    to_save = {"name": model}
    h = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)
    try:
        h(engine)
    except ValueError:
        pytest.fail("Unexpected ValueError")
    assert visible(dirname) == [f"{_PREFIX}_name_0.pt"]


def _test_save_model_optimizer_lr_scheduler_with_state_dict(device, dirname):
    torch.manual_seed(23)

    model = DummyModel().to(device)

    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.5)

    def update_fn(engine, batch):
        x = torch.rand((4, 1)).to(device)
        optim.zero_grad()
        y = model(x)
        loss = y.sum()
        loss.backward()
        optim.step()
        lr_scheduler.step()

    engine = Engine(update_fn)

    handler = disk_checkpoint(
        {"model": model, "optimizer": optim, "lr_scheduler": lr_scheduler}, dirname, _PREFIX, create_dir=True, n_saved=1
    )
    engine.add_event_handler(Events.EPOCH_COMPLETED, handler)

    engine.run([0, 1, 2], max_epochs=4)

    saved_objects = visible(dirname)
    assert saved_objects == [f"{_PREFIX}_checkpoint_12.pt"]
    saved_checkpoint = dirname / saved_objects[0]

    loaded_obj = torch.load(saved_checkpoint, map_location=device, weights_only=True)
    for f in ["model", "optimizer", "lr_scheduler"]:
        assert f in loaded_obj
    loaded_model_state_dict = loaded_obj["model"]
    loaded_optimizer_state_dict = loaded_obj["optimizer"]
    loaded_lr_scheduler_state_dict = loaded_obj["lr_scheduler"]

    assert isinstance(loaded_model_state_dict, dict)
    assert isinstance(loaded_optimizer_state_dict, dict)
    assert isinstance(loaded_lr_scheduler_state_dict, dict)

    assert_same(
        loaded_obj,
        {"model": model.state_dict(), "optimizer": optim.state_dict(), "lr_scheduler": lr_scheduler.state_dict()},
    )


def test_save_model_optimizer_lr_scheduler_with_state_dict(dirname):
    _test_save_model_optimizer_lr_scheduler_with_state_dict("cpu", dirname)


def _test_save_model_optimizer_lr_scheduler_with_validation(device, dirname):
    torch.manual_seed(23)

    def _build_objects(acc_list):
        model = DummyModel().to(device)
        optim = torch.optim.SGD(model.parameters(), lr=0.1)
        lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.5)

        def update_fn(engine, batch):
            x = torch.rand((4, 1)).to(device)
            optim.zero_grad()
            y = model(x)
            loss = y.pow(2.0).sum()
            loss.backward()
            optim.step()
            lr_scheduler.step()

        trainer = Engine(update_fn)

        evaluator = Engine(lambda e, b: None)
        acc_iter = iter(acc_list)

        @evaluator.on(Events.EPOCH_COMPLETED)
        def setup_result():
            evaluator.state.metrics["accuracy"] = next(acc_iter)

        @trainer.on(Events.EPOCH_COMPLETED)
        def run_eval():
            evaluator.run([0, 1, 2])

        def score_function(engine):
            return engine.state.metrics["accuracy"]

        save_handler = DiskSaver(dirname, create_dir=True, require_empty=False)
        early_stop = EarlyStopping(score_function=score_function, patience=2, trainer=trainer)
        evaluator.add_event_handler(Events.COMPLETED, early_stop)

        checkpointer = Checkpoint(
            {
                "trainer": trainer,
                "model": model,
                "optim": optim,
                "lr_scheduler": lr_scheduler,
                "early_stop": early_stop,
            },
            save_handler,
            include_self=True,
            global_step_transform=global_step_from_engine(trainer),
        )
        evaluator.add_event_handler(Events.COMPLETED, checkpointer)

        return trainer, evaluator, model, optim, lr_scheduler, early_stop, checkpointer

    trainer, evaluator, model, optim, scheduler, early, checkpointer = _build_objects([0.2, 0.3, 0.2])
    trainer.run([0, 1, 2], max_epochs=3)

    saved_objects = visible(dirname)
    assert saved_objects == ["checkpoint_3.pt"]
    saved_checkpoint = dirname / saved_objects[0]

    loaded_obj = torch.load(saved_checkpoint, map_location=device, weights_only=True)
    assert sorted(loaded_obj) == sorted(["trainer", "model", "optim", "lr_scheduler", "early_stop", "checkpointer"])

    trainer2, evaluator2, model2, optim2, scheduler2, early2, checkpointer2 = _build_objects([0.1, 0.1, 0.1])
    Checkpoint.load_objects(
        {
            "trainer": trainer2,
            "model": model2,
            "optim": optim2,
            "lr_scheduler": scheduler2,
            "early_stop": early2,
            "checkpointer": checkpointer2,
        },
        loaded_obj,
    )
    assert checkpointer2.last_checkpoint == checkpointer.last_checkpoint

    assert_same(model2.cpu().state_dict(), model.cpu().state_dict())

    optim_state_dict = optim.state_dict()
    loaded_optimizer_state_dict = optim2.state_dict()
    # "params" contains tensor IDs, which are different
    del optim_state_dict["param_groups"][0]["params"]
    del loaded_optimizer_state_dict["param_groups"][0]["params"]
    assert_same(loaded_optimizer_state_dict, optim_state_dict)

    def _check_state_dict(original, loaded):
        original_state_dict = original.state_dict()
        loaded_state_dict = loaded.state_dict()
        for key in original_state_dict.keys():
            assert key in loaded_state_dict
            assert_same(loaded_state_dict[key], original_state_dict[key], f"{type(original).__name__}[{key!r}]")

    _check_state_dict(trainer, trainer2)
    _check_state_dict(scheduler, scheduler2)
    _check_state_dict(early, early2)
    _check_state_dict(checkpointer, checkpointer2)

    trainer2.run([0, 1, 2], max_epochs=6)

    # early stopping should have triggered
    assert trainer2.state.epoch == 4

    # If Checkpoint's state was restored correctly, it should continue to respect n_saved
    # and delete old checkpoints, and have the correct last_checkpoint.
    assert visible(dirname) == ["checkpoint_4.pt"]
    assert checkpointer2.last_checkpoint == dirname / "checkpoint_4.pt"


def test_save_model_optimizer_lr_scheduler_with_validation(dirname):
    _test_save_model_optimizer_lr_scheduler_with_validation("cpu", dirname)


def test_checkpoint_load_objects():
    with pytest.raises(TypeError, match=r"Argument checkpoint should be a string or a dictionary"):
        Checkpoint.load_objects({}, [])

    with pytest.raises(TypeError, match=r"should have `load_state_dict` method"):
        Checkpoint.load_objects({"a": None}, {"a": None})

    with pytest.raises(TypeError, match=r"should have `load_state_dict` method"):
        Checkpoint.load_objects({"a": {"b": None}}, {"a": {"b": None}})

    model = DummyModel()
    to_load = {"model": model, "another_model": model}

    with pytest.raises(ValueError, match=r"Key 'model' from x is not found in y"):
        Checkpoint.load_objects(to_load, {})

    model = DummyModel()
    to_load = {"model": model}
    model2 = DummyModel()

    chkpt = {"model": model2.state_dict()}
    Checkpoint.load_objects(to_load, chkpt)
    assert_same(model.state_dict(), model2.state_dict())

    # Changed: ignite loaded `model`'s own state into `model` here, which cannot fail; two other
    # models' states go into two fresh models, each to its place in the nesting.
    model3 = DummyModel()
    chkpt = {"models": [{"model1": {"abc": model2.state_dict()}}, model3.state_dict()]}
    nested, last = DummyModel(), DummyModel()
    assert not torch.equal(nested.net.weight, model2.net.weight) and not torch.equal(last.net.weight, model3.net.weight)
    to_load = {"models": [{"model1": {"abc": nested}}, last]}
    Checkpoint.load_objects(to_load, chkpt)
    assert_same(nested.state_dict(), model2.state_dict())
    assert_same(last.state_dict(), model3.state_dict())


def test_checkpoint_load_objects_from_saved_file(dirname):
    def _get_single_obj_to_save():
        model = DummyModel()
        to_save = {"model": model}
        return to_save

    def _get_multiple_objs_to_save():
        model = DummyModel()
        optim = torch.optim.SGD(model.parameters(), lr=0.001)
        lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.5)
        to_save = {
            "model": model,
            "optimizer": optim,
            "lr_scheduler": lr_scheduler,
        }
        return to_save

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    # case: load from filepath
    to_save = _get_multiple_objs_to_save()
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)
    handler(trainer)
    fname = handler.last_checkpoint
    assert isinstance(fname, Path)
    assert str(dirname / _PREFIX) in str(fname)
    assert fname.exists()
    Checkpoint.load_objects(to_save, str(fname))
    Checkpoint.load_objects(to_save, fname)
    fresh = _get_multiple_objs_to_save()
    Checkpoint.load_objects(fresh, fname)
    assert_same(fresh["model"].state_dict(), to_save["model"].state_dict())
    fname.unlink()

    # case: multiple objects
    to_save = _get_multiple_objs_to_save()
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)
    handler(trainer)
    fname = handler.last_checkpoint
    assert isinstance(fname, Path)
    assert str(dirname / _PREFIX) in str(fname)
    assert fname.exists()
    loaded_objects = load(fname)
    Checkpoint.load_objects(to_save, loaded_objects)
    # Added: into fresh objects too (into the saved ones, nothing can be seen to change).
    fresh = _get_multiple_objs_to_save()
    assert not torch.equal(fresh["model"].net.weight, to_save["model"].net.weight)
    Checkpoint.load_objects(fresh, loaded_objects)
    for key in to_save:
        assert_same(fresh[key].state_dict(), to_save[key].state_dict(), key)
    fname.unlink()

    # case: saved multiple objects, loaded single object
    to_save = _get_multiple_objs_to_save()
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)
    handler(trainer)
    fname = handler.last_checkpoint
    assert isinstance(fname, Path)
    assert str(dirname / _PREFIX) in str(fname)
    assert fname.exists()
    loaded_objects = load(fname)
    to_load = {"model": DummyModel()}
    Checkpoint.load_objects(to_load, loaded_objects)
    assert_same(to_load["model"].state_dict(), to_save["model"].state_dict())
    fname.unlink()

    # case: single object
    to_save = _get_single_obj_to_save()
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=1)
    handler(trainer)
    fname = handler.last_checkpoint
    assert isinstance(fname, Path)
    assert str(dirname / _PREFIX) in str(fname)
    assert fname.exists()
    loaded_objects = load(fname)
    Checkpoint.load_objects(to_save, loaded_objects)
    fresh = _get_single_obj_to_save()  # Added, as above
    assert not torch.equal(fresh["model"].net.weight, to_save["model"].net.weight)
    Checkpoint.load_objects(fresh, loaded_objects)
    assert_same(fresh["model"].state_dict(), to_save["model"].state_dict())
    fname.unlink()


def test_load_checkpoint_with_different_num_classes(dirname):
    model = DummyPretrainedModel()
    to_save_single_object = {"model": model}

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    handler = disk_checkpoint(to_save_single_object, dirname, _PREFIX, create_dir=False, n_saved=1)
    handler(trainer)

    fname = handler.last_checkpoint
    loaded_checkpoint = load(fname)

    to_load_single_object = {"pretrained_features": model.features}

    with pytest.raises(RuntimeError):
        Checkpoint.load_objects(to_load_single_object, loaded_checkpoint)

    Checkpoint.load_objects(to_load_single_object, loaded_checkpoint, strict=False)

    loaded_weights = to_load_single_object["pretrained_features"].state_dict()["weight"]

    assert torch.equal(model.state_dict()["features.weight"], loaded_weights)

    # Added: strict=False into a fresh model without the head, so that the load has something to do.
    def _headless():
        m = DummyPretrainedModel()
        del m.fc
        assert not torch.equal(m.features.weight, model.features.weight)
        return m

    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\)"):
        Checkpoint.load_objects({"model": _headless()}, fname)
    headless = _headless()
    Checkpoint.load_objects({"model": headless}, fname, strict=False)
    assert torch.equal(headless.features.weight, model.features.weight)


def test_disksaver_wrong_input(dirname):
    with pytest.raises(ValueError, match=r"Directory path '\S+' is not found"):
        DiskSaver(dirname / "non-existing-folder", create_dir=False)

    def _test(ext):
        previous_fname = dirname / f"{_PREFIX}_obj_{1}{ext}"
        with open(previous_fname, "w") as f:
            f.write("test")

        with pytest.raises(ValueError, match=r"with extension '.pt' are already present"):
            DiskSaver(dirname, require_empty=True)

    _test(".pt")


def _test_checkpoint_filename_pattern_helper(
    to_save,
    filename_prefix="",
    score_function=None,
    score_name=None,
    global_step_transform=None,
    filename_pattern=None,
    dirname=None,
):
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(
        to_save,
        save_handler=save_handler,
        filename_prefix=filename_prefix,
        score_function=score_function,
        score_name=score_name,
        global_step_transform=global_step_transform,
        filename_pattern=filename_pattern,
    )

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=12, iteration=203, score=0.9999)

    checkpointer(trainer)
    assert save_handler.calls[-1][1] == checkpointer.last_checkpoint
    return checkpointer.last_checkpoint


def _test_disk_saver_filename_pattern_helper(
    to_save,
    filename_prefix="",
    score_function=None,
    score_name=None,
    global_step_transform=None,
    filename_pattern=None,
    dirname=None,
):
    # ignite: _test_model_checkpoint_filename_pattern_helper, with what ModelCheckpoint builds
    checkpointer = disk_checkpoint(
        to_save,
        dirname=dirname,
        filename_prefix=filename_prefix,
        score_function=score_function,
        score_name=score_name,
        global_step_transform=global_step_transform,
        filename_pattern=filename_pattern,
        require_empty=False,
    )

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=12, iteration=203, score=0.9999)

    checkpointer(trainer)
    name = Path(checkpointer.last_checkpoint).name
    assert name in visible(dirname)
    return name


@pytest.mark.parametrize("test_class", ["checkpoint", "disk_saver"])
def test_checkpoint_filename_pattern(test_class, dirname):
    if test_class == "checkpoint":
        _test = _test_checkpoint_filename_pattern_helper
    elif test_class == "disk_saver":
        _test = _test_disk_saver_filename_pattern_helper

    model = DummyModel()
    to_save = {"model": model}

    assert _test(to_save, dirname=dirname) == "model_203.pt"
    assert _test(to_save, "best", dirname=dirname) == "best_model_203.pt"
    assert _test(to_save, score_function=lambda e: e.state.score, dirname=dirname) == "model_0.9999.pt"

    res = _test(
        to_save,
        score_function=lambda e: e.state.score,
        global_step_transform=lambda e, _: e.state.epoch,
        dirname=dirname,
    )
    assert res == "model_12_0.9999.pt"

    assert (
        _test(to_save, score_function=lambda e: e.state.score, score_name="acc", dirname=dirname)
        == "model_acc=0.9999.pt"
    )

    res = _test(
        to_save,
        score_function=lambda e: e.state.score,
        score_name="acc",
        global_step_transform=lambda e, _: e.state.epoch,
        dirname=dirname,
    )
    assert res == "model_12_acc=0.9999.pt"

    assert _test(to_save, "best", score_function=lambda e: e.state.score, dirname=dirname) == "best_model_0.9999.pt"

    res = _test(
        to_save,
        "best",
        score_function=lambda e: e.state.score,
        global_step_transform=lambda e, _: e.state.epoch,
        dirname=dirname,
    )
    assert res == "best_model_12_0.9999.pt"

    res = _test(to_save, "best", score_function=lambda e: e.state.score, score_name="acc", dirname=dirname)
    assert res == "best_model_acc=0.9999.pt"

    res = _test(
        to_save,
        "best",
        score_function=lambda e: e.state.score,
        score_name="acc",
        global_step_transform=lambda e, _: e.state.epoch,
        dirname=dirname,
    )
    assert res == "best_model_12_acc=0.9999.pt"

    pattern = "{name}.{ext}"
    assert _test(to_save, filename_pattern=pattern, dirname=dirname) == "model.pt"

    pattern = "chk-{name}--{global_step}.{ext}"
    # (sic) ignite passes `to_save` as filename_prefix here; the pattern does not use it.
    assert _test(to_save, to_save, filename_pattern=pattern, dirname=dirname) == "chk-model--203.pt"
    pattern = "chk-{filename_prefix}--{name}--{global_step}.{ext}"
    assert _test(to_save, "best", filename_pattern=pattern, dirname=dirname) == "chk-best--model--203.pt"
    pattern = "chk-{name}--{score}.{ext}"
    assert (
        _test(to_save, score_function=lambda e: e.state.score, filename_pattern=pattern, dirname=dirname)
        == "chk-model--0.9999.pt"
    )
    pattern = "{global_step}-{name}-{score}.chk.{ext}"
    res = _test(
        to_save,
        score_function=lambda e: e.state.score,
        global_step_transform=lambda e, _: e.state.epoch,
        filename_pattern=pattern,
        dirname=dirname,
    )
    assert res == "12-model-0.9999.chk.pt"

    pattern = "chk-{name}--{score_name}--{score}.{ext}"
    res = _test(
        to_save, score_function=lambda e: e.state.score, score_name="acc", filename_pattern=pattern, dirname=dirname
    )
    assert res == "chk-model--acc--0.9999.pt"

    pattern = "chk-{name}-{global_step}-{score_name}-{score}.{ext}"
    res = _test(
        to_save,
        score_function=lambda e: e.state.score,
        score_name="acc",
        global_step_transform=lambda e, _: e.state.epoch,
        filename_pattern=pattern,
        dirname=dirname,
    )
    assert res == "chk-model-12-acc-0.9999.pt"

    pattern = "{filename_prefix}-{name}-{score}.chk"
    res = _test(to_save, "best", score_function=lambda e: e.state.score, filename_pattern=pattern, dirname=dirname)
    assert res == "best-model-0.9999.chk"

    pattern = "resnet-{filename_prefix}-{name}-{global_step}-{score}.chk"
    res = _test(
        to_save,
        "best",
        score_function=lambda e: e.state.score,
        global_step_transform=lambda e, _: e.state.epoch,
        filename_pattern=pattern,
        dirname=dirname,
    )
    assert res == "resnet-best-model-12-0.9999.chk"

    pattern = "{filename_prefix}-{name}-{score_name}-{score}.chk"
    res = _test(
        to_save,
        "best",
        score_function=lambda e: e.state.score,
        score_name="acc",
        filename_pattern=pattern,
        dirname=dirname,
    )
    assert res == "best-model-acc-0.9999.chk"

    pattern = "{global_step}-{filename_prefix}-{name}-{score_name}-{score}"
    res = _test(
        to_save,
        "best",
        score_function=lambda e: e.state.score,
        score_name="acc",
        global_step_transform=lambda e, _: e.state.epoch,
        filename_pattern=pattern,
        dirname=dirname,
    )
    assert res == "12-best-model-acc-0.9999"

    pattern = "SAVE-{name}-{score_name}-{score}.pth"
    res = _test(
        to_save,
        "best",
        score_function=lambda e: e.state.score,
        score_name="acc",
        global_step_transform=lambda e, _: e.state.epoch,
        filename_pattern=pattern,
        dirname=dirname,
    )

    assert res == "SAVE-model-acc-0.9999.pth"

    pattern = "{global_step}-chk-{filename_prefix}-{name}-{score_name}-{score}.{ext}"
    assert _test(to_save, filename_pattern=pattern, dirname=dirname) == "203-chk--model-None-None.pt"

    with pytest.raises(KeyError, match=r"random_key"):
        pattern = "SAVE-{random_key}.{ext}"
        _test(to_save, filename_pattern=pattern, dirname=dirname)


def test_setup_filename_pattern():
    # default filename pattern
    assert Checkpoint.setup_filename_pattern() == "{filename_prefix}_{name}_{global_step}_{score_name}={score}.{ext}"

    assert Checkpoint.setup_filename_pattern(False) == "{name}_{global_step}_{score_name}={score}.{ext}"
    assert Checkpoint.setup_filename_pattern(False, False, False) == "{name}_{global_step}.{ext}"
    assert Checkpoint.setup_filename_pattern(False, True, False) == "{name}_{global_step}_{score}.{ext}"
    assert Checkpoint.setup_filename_pattern(False, True, False, False) == "{name}_{score}.{ext}"
    assert Checkpoint.setup_filename_pattern(False, True, True, False) == "{name}_{score_name}={score}.{ext}"

    with pytest.raises(ValueError, match=r"At least one of with_score and with_global_step should be True."):
        Checkpoint.setup_filename_pattern(False, False, False, False)

    with pytest.raises(ValueError, match=r"If with_score_name is True, with_score should be also True"):
        Checkpoint.setup_filename_pattern(True, False, True, True)


def _setup_checkpoint():
    save_handler = RecordingSaver()
    model = DummyModel()
    to_save = {"model": model}

    checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=None)
    assert checkpointer.last_checkpoint is None

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    checkpointer(trainer)
    trainer.state.iteration = 10
    checkpointer(trainer)
    trainer.state.iteration = 20
    checkpointer(trainer)
    assert save_handler.call_count == 3
    return checkpointer


def test_checkpoint_state_dict():
    checkpointer = _setup_checkpoint()
    sd = checkpointer.state_dict()
    assert "_saved" in sd
    assert isinstance(sd["_saved"], list) and len(sd["_saved"]) == len(checkpointer._saved)

    for saved_item, true_item in zip(sd["_saved"], checkpointer._saved):
        assert saved_item[0] == true_item.priority
        assert saved_item[1] == true_item.filename
    assert sd["_saved"] == [(0, "model_0.pt"), (10, "model_10.pt"), (20, "model_20.pt")]


def test_checkpoint_load_state_dict():
    true_checkpointer = _setup_checkpoint()

    save_handler = RecordingSaver()
    model = DummyModel()
    to_save = {"model": model}
    checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=None)

    sd = {"_saved": [(0, "model_0.pt"), (10, "model_10.pt"), (20, "model_20.pt")]}
    checkpointer.load_state_dict(sd)
    assert checkpointer._saved == true_checkpointer._saved


@pytest.mark.parametrize(
    "to_save",
    [
        {"model": DummyModel()},
        {"model": [DummyModel(), DummyModel()]},
        {"model": {"a": {"b": DummyModel()}}},
    ],
)
def test_checkpoint__setup_checkpoint(to_save):
    save_handler = RecordingSaver()
    checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=2)
    checkpoint = checkpointer._setup_checkpoint()

    assert isinstance(checkpoint, dict)
    for k, obj in to_save.items():
        assert k in checkpoint
        if isinstance(obj, torch.nn.Module):
            assert_same(checkpoint[k], obj.state_dict())
        elif isinstance(obj, list):
            assert len(checkpoint[k]) == len(obj)
            for c2, obj2 in zip(checkpoint[k], obj):
                assert_same(c2, obj2.state_dict())
        elif isinstance(obj, dict):
            c2 = checkpoint[k]
            for k2, obj2 in obj.items():
                if isinstance(obj2, torch.nn.Module):
                    assert_same(c2[k2], obj2.state_dict())
                elif isinstance(obj2, dict):
                    c3 = c2[k2]
                    for k3, obj3 in obj2.items():
                        assert_same(c3[k3], obj3.state_dict())


def test_checkpoint_fixed_filename():
    model = DummyModel()
    to_save = {"model": model}

    def _test(n_saved):
        save_handler = RecordingSaver()
        checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=n_saved, filename_pattern="{name}.{ext}")

        trainer = Engine(lambda e, b: None)

        for i in range(10):
            trainer.state = State(epoch=i, iteration=i)
            checkpointer(trainer)
            assert save_handler.call_count == i + 1
            metadata = {"basename": "model", "score_name": None, "priority": i}
            save_handler.assert_called_with(model.state_dict(), "model.pt", metadata)

    _test(None)
    _test(1)
    _test(3)


def test_checkpoint_reset():
    model = DummyModel()
    to_save = {"model": model}

    save_handler = RecordingSaver()

    checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=2)
    assert checkpointer.last_checkpoint is None

    trainer = Engine(lambda e, b: None)

    trainer.state = State(epoch=0, iteration=123)
    checkpointer(trainer)
    trainer.state.iteration = 234
    checkpointer(trainer)

    assert save_handler.call_count == 2
    assert checkpointer.last_checkpoint == "model_234.pt"
    assert len(checkpointer._saved) == 2
    assert sorted([item.filename for item in checkpointer._saved]) == sorted(["model_123.pt", "model_234.pt"])

    checkpointer.reset()
    assert len(checkpointer._saved) == 0

    trainer.state.iteration = 124
    checkpointer(trainer)

    assert save_handler.call_count == 3
    assert save_handler.removed == []
    assert checkpointer.last_checkpoint == "model_124.pt"
    assert len(checkpointer._saved) == 1
    assert sorted([item.filename for item in checkpointer._saved]) == sorted(["model_124.pt"])


def test_checkpoint_reset_with_engine(dirname):
    name = "model"
    engine = Engine(lambda e, b: None)
    model = DummyModel()
    to_save = {"model": model}
    handler = disk_checkpoint(to_save, dirname, _PREFIX, create_dir=False, n_saved=2)

    engine.add_event_handler(Events.EPOCH_COMPLETED, handler)
    engine.run([0, 1], max_epochs=10)

    expected = sorted([f"{_PREFIX}_{name}_{i}.pt" for i in [9 * 2, 10 * 2]])
    assert visible(dirname) == expected
    assert "PREFIX_model_20.pt" in str(handler.last_checkpoint)

    handler.reset()
    engine.state.max_epochs = None
    engine.run([0, 1], max_epochs=2)

    expected += [f"{_PREFIX}_{name}_{i}.pt" for i in [1 * 2, 2 * 2]]
    assert visible(dirname) == sorted(expected)
    assert "PREFIX_model_4.pt" in str(handler.last_checkpoint)


def test_greater_or_equal():
    scores = iter([1, 2, 2, 2])

    def score_function(_):
        return next(scores)

    class Saver:
        def __init__(self):
            self.counter = 0

        def __call__(self, c, f, m):
            if self.counter == 0:
                assert f == "model_1.pt"
            else:
                assert f == "model_2.pt"
            self.counter += 1

    handler = Saver()

    checkpointer = Checkpoint(
        to_save={"model": DummyModel()},
        save_handler=handler,
        score_function=score_function,
        n_saved=2,
        greater_or_equal=True,
    )
    trainer = Engine(lambda e, b: None)

    for _ in range(4):
        checkpointer(trainer)
    assert handler.counter == 4


def test_greater_or_equal_model_checkpoint(dirname):
    scores = iter([1, 2, 2, 2])

    def score_function(_):
        return next(scores)

    to_save = {"model": DummyModel()}
    checkpointer = disk_checkpoint(
        to_save,
        dirname,
        score_function=score_function,
        n_saved=2,
        greater_or_equal=True,
    )
    trainer = Engine(lambda e, b: None)

    for i in range(4):
        checkpointer(trainer)
        if i == 0:
            assert Path(checkpointer.last_checkpoint).name == "model_1.pt"
        else:
            assert Path(checkpointer.last_checkpoint).name == "model_2.pt"
    assert visible(dirname) == ["model_1.pt", "model_2.pt"]


def test_get_default_score_fn():
    with pytest.raises(ValueError, match=r"Argument score_sign should be 1 or -1"):
        Checkpoint.get_default_score_fn("acc", 2.0)

    engine = Engine(lambda e, b: None)
    engine.state.metrics["acc"] = 0.9
    engine.state.metrics["loss"] = 0.123

    score_fn = Checkpoint.get_default_score_fn("acc")
    score = score_fn(engine)
    assert score == 0.9

    score_fn = Checkpoint.get_default_score_fn("loss", -1)
    score = score_fn(engine)
    assert score == -0.123


@pytest.mark.parametrize("obj_to_save", ["optim", "trainer"])
def test_load_single_object(obj_to_save, dirname):
    # Checks https://github.com/pytorch/ignite/issues/2479

    trainer = Engine(lambda e, b: None)
    if obj_to_save == "optim":
        t = torch.tensor(0.0)
        optim = torch.optim.SGD([t], lr=0.1)
        to_save = {"optim": optim}
    elif obj_to_save == "trainer":
        to_save = {"trainer": trainer}

    c = Checkpoint(to_save, save_handler=dirname)
    c(trainer)
    assert visible(dirname) == [f"{obj_to_save}_0.pt"]

    checkpoint_fp = dirname / c.last_checkpoint
    Checkpoint.load_objects(to_load=to_save, checkpoint=str(checkpoint_fp))


def test_checkpoint_saved_event():
    """Test that SAVED_CHECKPOINT event is fired correctly."""
    save_handler = RecordingSaver()
    to_save = {"model": DummyModel()}

    checkpointer = Checkpoint(to_save, save_handler=save_handler, n_saved=2)

    trainer = Engine(lambda e, b: None)
    trainer.state = State(epoch=0, iteration=0)

    # Track event firing
    event_count = 0

    # First, call the checkpoint handler to trigger automatic event registration
    checkpointer(trainer)

    @trainer.on(Checkpoint.SAVED_CHECKPOINT)
    def on_checkpoint_saved(engine):
        nonlocal event_count
        event_count += 1

    # Verify the first checkpoint didn't trigger our handler (attached after)
    assert event_count == 0

    # Second checkpoint - should fire event and trigger our handler
    trainer.state.iteration = 1
    checkpointer(trainer)
    assert event_count == 1

    # Verify save handler was called twice
    assert save_handler.call_count == 2


def test_checkpoint_on_exception(dirname):
    model = DummyModel()
    to_save = {"model": model}
    save_handler = RecordingSaver()

    checkpointer = Checkpoint(to_save, save_handler=save_handler)

    def update_fn(engine, batch):
        if engine.state.iteration == 1:
            raise RuntimeError("training crash")
        return None

    trainer = Engine(update_fn)

    # Attach Checkpoint to EXCEPTION_RAISED
    trainer.add_event_handler(Events.EXCEPTION_RAISED, checkpointer)

    trainer.run([0, 0, 0], max_epochs=1)

    # Assert that save_handler was called
    assert save_handler.call_count == 1

    metadata = {"basename": "model", "score_name": None, "priority": 1}
    save_handler.assert_called_with(model.state_dict(), "model_1.pt", metadata)
