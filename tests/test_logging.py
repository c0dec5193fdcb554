"""
Logs where the framework's users look (see trainer_ckpt/core/logs.py):
the WARNINGs of a fallback or a quarantine reach the runner's MMLogger (its log file, in
mmengine's format), an ignite Engine's `engine.logger` and ignite's own logger, fvcore's
`Checkpointer.logger`, and AllenNLP's root logging; with no framework logger they go where they
went; each record once, under its own name, to its own framework's logger only; chatter at DEBUG.
"""
import contextlib
import io
import logging
import re
import threading
import uuid

import pytest
import torch

from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.core.logs import logs_to
from trainer_ckpt.stores import NamedFiles, named

MAIN = named.MAIN
FALLBACK = re.compile(r"Checkpoint \S+ in \S+ is not usable: .*Falling back to an older checkpoint\.")


@contextlib.contextmanager
def bare_root():
    """No handler on the root logger, as in a script that never configured logging (pytest's capture
    handlers are set aside: they are added for each phase of a test, so this is done in its body)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


@contextlib.contextmanager
def restored(*names):
    """Puts the loggers' handlers, level and propagation back as they were."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self):
        return [r.getMessage() for r in self.records]


def corrupt_run(directory, n=2, bad=1):
    """A directory of n checkpoints written by the engine, the `bad` newest truncated."""
    writer = Engine(NamedFiles(str(directory), named.FVCORE))
    for i in range(1, n + 1):
        writer.save(f"model_{i:07d}", {MAIN: {"w": torch.full((4,), float(i))}}, CheckpointInfo(0, i, time=1000.0 + i))
    writer.close()
    for i in range(n - bad + 1, n + 1):
        path = directory / f"model_{i:07d}.pth"
        path.write_bytes(path.read_bytes()[:100])
    return directory


def fall_back(directory, logger=None):
    engine = Engine(NamedFiles(str(directory), named.FVCORE), logger=logger)
    try:
        return engine.newest_good()[0].name
    finally:
        engine.close()


# ---- the engine ---------------------------------------------------------------------------------

def test_without_a_framework_logger_records_go_where_they_went(tmp_path, capsys):
    corrupt_run(tmp_path)
    with bare_root():
        assert fall_back(tmp_path) == "model_0000001"
    err = capsys.readouterr().err
    assert FALLBACK.fullmatch(err.strip()), err  # Python's last resort: the bare message, as before


def test_a_framework_logger_gets_the_record_once_under_its_name_and_ours_still_do(tmp_path, capsys):
    corrupt_run(tmp_path)
    framework, ours, root = Records(), Records(), Records()
    target = logging.getLogger(f"framework-{uuid.uuid4().hex}")  # propagates to the root logger, as most do
    with bare_root(), restored("trainer_ckpt.engine", target.name):
        target.addHandler(framework)
        logging.getLogger("trainer_ckpt.engine").addHandler(ours)
        logging.getLogger().addHandler(root)
        assert fall_back(tmp_path, logger=target) == "model_0000001"
    assert [FALLBACK.fullmatch(m) is not None for m in framework.messages()] == [True]
    assert framework.records[0].name == "trainer_ckpt.engine" and framework.records[0].levelname == "WARNING"
    assert ours.records == framework.records  # the name users filter on still gets it
    assert root.records == framework.records  # once, though both loggers propagate to the root logger
    assert capsys.readouterr().err == ""  # handled: no last resort


def test_a_framework_logger_without_handlers_gives_level_and_time_on_stderr(tmp_path, capsys):
    corrupt_run(tmp_path)
    with bare_root():
        fall_back(tmp_path, logger=logging.getLogger(f"unconfigured-{uuid.uuid4().hex}"))
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} trainer_ckpt\.engine WARNING: " + FALLBACK.pattern, err.strip()), err


def test_a_logging_configuration_that_drops_our_handlers_does_not_end_the_routes(tmp_path):
    corrupt_run(tmp_path)
    framework = Records()
    target = logging.getLogger(f"framework-{uuid.uuid4().hex}")
    target.addHandler(framework)
    target.propagate = False
    with restored("trainer_ckpt"):
        logging.getLogger("trainer_ckpt").handlers.clear()  # as logging.config.dictConfig does to a logger it configures
        fall_back(tmp_path, logger=target)
    assert [FALLBACK.fullmatch(m) is not None for m in framework.messages()] == [True]


def test_each_engine_and_thread_routes_to_its_own_logger_and_background_saves_too(tmp_path):
    """Two engines in two threads at once, each with its own framework logger: each logger gets
    only its engine's records; a background save's messages, from the worker thread, go to its engine's."""
    handlers = {name: Records() for name in ("a", "b")}
    loggers = {}
    for name, handler in handlers.items():
        loggers[name] = logging.getLogger(f"framework-{name}-{uuid.uuid4().hex}")
        loggers[name].addHandler(handler)
        loggers[name].propagate = False
        corrupt_run(tmp_path / name, n=3, bad=2)
    barrier = threading.Barrier(2)

    def work(name):
        barrier.wait()
        assert fall_back(tmp_path / name, logger=loggers[name]) == "model_0000001"
        barrier.wait()
        with logs_to(loggers[name]):  # a face's own message, routed around its call
            logging.getLogger("trainer_ckpt.face").warning("face %s", name)

    threads = [threading.Thread(target=work, args=(name,)) for name in handlers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, handler in handlers.items():
        assert [m.split(" in ")[0] for m in handler.messages()] == [
            "Checkpoint model_0000003", "Checkpoint model_0000002", f"face {name}"], handler.messages()
        assert all(str(tmp_path / name) in m for m in handler.messages()[:2])

    from trainer_ckpt.policies.retention import KeepMostRecentByCount

    background = Records()
    target = logging.getLogger(f"framework-bg-{uuid.uuid4().hex}")
    target.addHandler(background)
    target.propagate = False
    target.setLevel(logging.INFO)  # a framework logger's level counts, as if it logged the record itself
    engine = Engine(NamedFiles(str(tmp_path / "bg"), named.FVCORE), background=True, logger=target)
    with restored("trainer_ckpt.engine"):
        logging.getLogger("trainer_ckpt.engine").setLevel(logging.INFO)  # retention's deletions are at INFO
        for i in range(1, 4):
            engine.save(f"model_{i:07d}", {MAIN: {"w": torch.zeros(4)}}, CheckpointInfo(0, i, time=1000.0 + i),
                        retention=(KeepMostRecentByCount(1), lambda e: True))
        engine.close()
    deletions = [r for r in background.records if r.getMessage().startswith("Deleting checkpoint")]
    assert len(deletions) == 2 and {r.threadName for r in deletions} == {"trainer_ckpt-save"}


def test_the_direct_io_probe_is_logged_at_debug(tmp_path, caplog):
    from trainer_ckpt.io import fastio

    with caplog.at_level(logging.DEBUG, logger="trainer_ckpt.storage"):
        fastio.direct_io(str(tmp_path))
    probes = [r for r in caplog.records if "are written" in r.getMessage()]
    assert [r.levelno for r in probes] == [logging.DEBUG]
    assert probes[0].getMessage().startswith(f"Checkpoint files in {tmp_path} are written ")


# ---- the faces ----------------------------------------------------------------------------------

def test_mmengine_fallback_lands_in_the_runners_log_file_in_mmengines_format(tmp_path, capsys):
    from scripts.mmengine_run import build_runner
    from trainer_ckpt.mmengine import CheckpointHook

    build_runner(str(tmp_path), dict(type=CheckpointHook, interval=1), max_epochs=2, val=False).train()
    newest = tmp_path / "epoch_2.pth"
    newest.write_bytes(newest.read_bytes()[:200])
    capsys.readouterr()
    with bare_root():
        runner = build_runner(str(tmp_path), dict(type=CheckpointHook, interval=1), max_epochs=2, val=False, resume=True)
        runner.train()
    assert runner.iter == 16  # resumed from epoch 1
    log = (tmp_path / runner.timestamp / f"{runner.timestamp}.log").read_text()
    stamp = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d"
    assert len(re.findall(rf"(?m)^{stamp} - trainer_ckpt\.engine - WARNING - {FALLBACK.pattern}$", log)) == 1, log
    assert "Checkpoint epoch_2.pth in" in log and "Moved " in log
    assert re.search(rf"(?m)^{stamp} - trainer_ckpt\._mmengine_face - WARNING - last_checkpoint names {newest}, which "
                     "is missing or not usable: resuming from", log), log
    captured = capsys.readouterr()
    assert "Falling back" not in captured.err  # no bare copy on stderr
    assert "Falling back" in captured.out  # mmengine's console (stdout)


def test_ignite_fallback_reaches_ignites_logger_and_the_handlers_warnings_the_engines(tmp_path, capsys):
    from ignite.engine import Engine as IgniteEngine
    from ignite.engine import Events
    from ignite.utils import setup_logger

    from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint

    def run(directory, logger_name=None, max_epochs=3):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        trainer = IgniteEngine(lambda engine, batch: model(batch).sum().backward())
        if logger_name is not None:
            trainer.logger = setup_logger(logger_name, stream=stream, level=logging.WARNING)
        handler = Checkpoint({"model": model, "trainer": trainer}, DiskSaver(directory, require_empty=False), n_saved=3)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
        trainer.run([torch.ones(2, 3)] * 4, max_epochs=max_epochs)

    ignite_format = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} trainer_ckpt\.engine WARNING: "
    stream = io.StringIO()
    run(tmp_path)
    newest = tmp_path / "checkpoint_12.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with bare_root(), restored("ignite"):
        setup_logger("ignite", stream=stream, reset=True)  # ignite's default logger, configured
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_8.pt")
    assert re.fullmatch(ignite_format + FALLBACK.pattern, stream.getvalue().strip()), stream.getvalue()

    # A checkpoint lost a file its record lists: the handler's first save moves it away, with a WARNING to
    # the trainer's logger (`trainer.logger = setup_logger("trainer")`).
    (tmp_path / ".checkpoint_8.pt.rng").unlink()  # the random state saved with it
    stream = io.StringIO()
    with bare_root():
        run(tmp_path, logger_name=f"trainer-{uuid.uuid4().hex}", max_epochs=1)
    lines = [line for line in stream.getvalue().splitlines() if "trainer_ckpt" in line]
    assert len(lines) == 1 and re.fullmatch(ignite_format + r"Checkpoint checkpoint_8\.pt in \S+ lost a state file its "
                                            r"record lists; moved .*into corrupt/", lines[0]), stream.getvalue()
    assert "trainer_ckpt" not in capsys.readouterr().err  # no bare copy


def test_fvcore_fallback_reaches_the_checkpointers_logger(tmp_path, capsys):
    from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

    model = torch.nn.Linear(2, 3)
    periodic = PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 5)
    for it in range(10):
        periodic.step(it)
    newest = tmp_path / "model_0000009.pth"
    newest.write_bytes(newest.read_bytes()[:-100])
    stream = io.StringIO()
    with bare_root(), restored("fvcore"):
        fvcore_logger = logging.getLogger("fvcore")  # as detectron2's setup_logger(name="fvcore") leaves it
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
        fvcore_logger.addHandler(handler)
        fvcore_logger.setLevel(logging.DEBUG)
        fvcore_logger.propagate = False
        checkpointer = Checkpointer(torch.nn.Linear(2, 3), str(tmp_path))
        assert checkpointer.logger.name == "fvcore.common.checkpoint"
        assert checkpointer.resume_or_load("", resume=True)["iteration"] == 4
    text = stream.getvalue()
    assert re.search(r"(?m)^\[[^]]+\] trainer_ckpt\.engine WARNING: " + FALLBACK.pattern + "$", text), text
    assert re.search(r"(?m)^\[[^]]+\] trainer_ckpt\._fvcore_face WARNING: last_checkpoint names model_0000009\.pth, "
                     r"which is missing or not usable: resuming from model_0000004\.pth", text), text
    assert "fvcore.common.checkpoint INFO: [Checkpointer] Loading from" in text  # fvcore's own, in the same place
    assert "trainer_ckpt" not in capsys.readouterr().err


def test_allennlp_root_logging_formats_our_records_once(tmp_path, monkeypatch):
    """AllenNLP configures the root logger: our records propagate there, in its format, once (the
    AllenNLP face gives no framework logger)."""
    import sys

    from allennlp.common import logging as allennlp_logging
    from allennlp.common.tqdm import logger as tqdm_logger

    from tests.conftest import trainer_at
    from trainer_ckpt import DefaultCheckpointer, KeepAll

    run = tmp_path / "run"
    checkpointer = DefaultCheckpointer(run, retention_policy=KeepAll())
    for e in (1, 2):
        checkpointer.save_checkpoint(trainer_at(e, 0))
    checkpointer.close()
    newest = run / "model_state_e2_b0.th"
    newest.write_bytes(newest.read_bytes()[:50])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # prepare_global_logging replaces it
    root = logging.getLogger()
    with bare_root(), restored("", tqdm_logger.name):
        allennlp_logging.prepare_global_logging(str(tmp_path), rank=0, world_size=1)
        try:
            assert DefaultCheckpointer(run).load_checkpoint().trainer_state["epochs_completed"] == 1
        finally:
            for handler in root.handlers:
                handler.close()
    log = (tmp_path / "out.log").read_text()
    found = re.findall(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - WARNING - trainer_ckpt\.engine - " + FALLBACK.pattern + "$", log)
    assert len(found) == 1, log
