"""
Crash-injection harness: a child process saves checkpoints of a given size in a loop (keeping 2,
so retention deletes as it goes) and is SIGKILLed at a random moment: at a random time (mostly
inside writes), or right before or after its k-th rename, or right before its k-th file deletion.
Then a fresh checkpointer must restore the newest checkpoint the child had completed, with the
contents its name promises; anything else counts as torn or unrecoverable.

    .venv/bin/python scripts/crash_test.py --trials 200                         # trainer_ckpt
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer ours_background
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer allennlp  # AllenNLP's, to compare
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer fvcore_face   # a plain loop, trainer_ckpt.fvcore
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer fvcore        # the same loop, fvcore's own
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer ignite_face   # a real ignite Engine, trainer_ckpt.ignite
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer ignite        # the same Engine, ignite's own
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer mmengine_face # a real mmengine Runner
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer mmengine      # the same Runner, mmengine's own
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer lightning_face # a real Lightning Trainer, trainer_ckpt.lightning
    .venv/bin/python scripts/crash_test.py --trials 200 --checkpointer lightning      # the same Trainer, Lightning's own ModelCheckpoint

The ignite runs keep ignite's default `n_saved=1` (`--ignite-n-saved 2` to keep two); a restarted
ignite run loads the file with the highest step in its name (ignite has no finder), ours
`trainer_ckpt.ignite.latest_checkpoint`.

The Lightning runs save after every training step (`every_n_train_steps=1, save_top_k=1,
save_last=True`: a step's file, then `last.ckpt`, the previous step's file deleted) and a restarted
run does what a user does: a fresh Trainer's `fit(ckpt_path="last")` (Lightning's own picks the
newest `last*.ckpt` by mtime; ours the newest checkpoint that verifies). Lightning's own commits
through fsspec (a temp file, then `shutil.move`, i.e. `os.rename`): in the Lightning modes the
rename kill moments arm `os.rename` as well as `os.replace`. Its temp file goes where `tempfile`
says (a user's /tmp): here beside the checkpoints (one file system), unless `--lightning-tmpdir
/dev/shm` (a tmpfs /tmp, as many distributions mount it, or checkpoints on another disk than /tmp):
then `shutil.move` falls back to copying the file into place.

Children are forked from this process (everything is imported once, so a trial takes well under a
second); they die of a real SIGKILL, with no clean-up of any kind.
"""
import argparse
import collections
import logging
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

MODES = ("random_time", "before_rename", "after_rename", "before_delete")


class _Trainer:
    """What the checkpointer asks of a trainer; checkpoint i holds tensors filled with i."""

    def __init__(self, i: int, numel: int) -> None:
        self.i, self.numel = i, numel

    def get_checkpoint_state(self):
        from allennlp.training.trainer import TrainerCheckpoint

        return TrainerCheckpoint(
            {"weight": torch.full((self.numel,), float(self.i))},
            {"epochs_completed": self.i, "batches_in_epoch_completed": 0, "i": self.i,
             "optimizer": {"exp_avg": torch.full((self.numel // 8,), float(self.i))}},
        )


def _make(which: str, directory: str, **kwargs):
    if which in ("ours", "ours_background"):
        from trainer_ckpt import DefaultCheckpointer

        return DefaultCheckpointer(directory, keep_most_recent_by_count=2, background=which == "ours_background", **kwargs)
    from allennlp.training.checkpointer import Checkpointer

    return Checkpointer(directory, keep_most_recent_by_count=2)


class _Holder:
    """A checkpointable (an optimizer's stand-in) for the plain-loop checkpointers."""

    def __init__(self, numel: int) -> None:
        self.exp_avg = torch.zeros(numel // 8)

    def state_dict(self):
        return {"exp_avg": self.exp_avg}

    def load_state_dict(self, state) -> None:
        self.exp_avg = state["exp_avg"]


def _plain_loop(which: str, directory: str, numel: int):
    """A plain PyTorch loop's model, optimizer state and (fvcore's or our) checkpointer."""
    if which.startswith("fvcore_face"):
        from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

        kwargs = {"background": which == "fvcore_face_background"}
    else:
        from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer

        kwargs = {}
    model, holder = torch.nn.Linear(1, 1, bias=False), _Holder(numel)
    model.weight = torch.nn.Parameter(torch.zeros(numel), requires_grad=False)
    checkpointer = Checkpointer(model, directory, optimizer=holder, **kwargs)
    return model, holder, checkpointer, PeriodicCheckpointer(checkpointer, 1, max_to_keep=2)


def _saver(which: str, directory: str, numel: int):
    """save(i): the loop's i-th checkpoint, holding tensors filled with i."""
    if not which.startswith("fvcore"):
        checkpointer = _make(which, directory)
        return lambda i: checkpointer.maybe_save_checkpoint(_Trainer(i, numel), i, 0)
    model, holder, _, periodic = _plain_loop(which, directory, numel)

    def save(i: int) -> None:
        model.weight.fill_(float(i))
        holder.exp_avg = torch.full((numel // 8,), float(i))
        periodic.step(i - 1)  # iteration i - 1 done: model_{i-1:07d}.pth

    return save


def _arm(mode: str, k: int, renames: Tuple[str, ...] = ("replace",)) -> None:
    """Makes this process SIGKILL itself around its k-th rename or deletion."""
    names, when = {"before_rename": (renames, "before"), "after_rename": (renames, "after"),
                   "before_delete": (("remove", "unlink"), "before")}[mode]  # pathlib deletes with unlink
    calls = [0]

    def hook(original):
        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if calls[0] == k and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return hooked

    for name in names:
        setattr(os, name, hook(getattr(os, name)))


IGNITE_N_SAVED = [1]  # ignite's default; --ignite-n-saved changes it


def _ignite_loop(which: str, directory: str, numel: int):
    """A real ignite Engine whose iteration i fills the model and optimizer state with i, checkpointed
    after every iteration by (ignite's or our) Checkpoint, keeping n_saved (ignite's default: 1)."""
    from ignite.engine import Engine

    if which.startswith("ignite_face"):
        from trainer_ckpt.ignite import Checkpoint, DiskSaver

        saver = DiskSaver(directory, require_empty=False, background=which.endswith("_background"))
    else:
        from ignite.handlers import Checkpoint, DiskSaver

        saver = DiskSaver(directory, require_empty=False)
    model, holder = torch.nn.Linear(1, 1, bias=False), _Holder(numel)
    model.weight = torch.nn.Parameter(torch.zeros(numel), requires_grad=False)

    def step(engine, batch) -> None:
        model.weight.fill_(float(engine.state.iteration))
        holder.exp_avg = torch.full((numel // 8,), float(engine.state.iteration))

    trainer = Engine(step)
    to_save = {"model": model, "optimizer": holder, "trainer": trainer}
    return trainer, model, holder, to_save, Checkpoint(to_save, saver, n_saved=IGNITE_N_SAVED[0])


def _ignite_child(which: str, directory: str, log_path: str, numel: int) -> None:
    from ignite.engine import Events

    trainer, _, _, _, handler = _ignite_loop(which, directory, numel)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    background = which.endswith("_background")
    with open(log_path, "a") as log:
        def committed(engine) -> None:
            done = engine.state.iteration - int(background)
            if done:
                log.write(f"{done}\n")
                log.flush()

        trainer.add_event_handler(Events.ITERATION_COMPLETED, committed)
        trainer.run(range(1_000_000), max_epochs=1)


class _Stop(Exception):
    """Raised by the mmengine model's first step after a resume: the restored state is in place."""


def _mmengine_runner(which: str, directory: str, numel: int, resume: bool, log_path: Optional[str] = None):
    """A real mmengine Runner (iteration-based) whose iteration i fills the model with i, checkpointed
    after every iteration by (mmengine's or our) CheckpointHook, keeping one (`max_keep_ckpts=1`)."""
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Filler(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(numel), requires_grad=False)

        def forward(self, *args, **kwargs):
            return {}

        def train_step(self, data, optim_wrapper):
            if resume:
                raise _Stop()
            self.weight.fill_(float(self.iteration + 1))
            return {}

    class Log(Hook):
        priority = "LOWEST"  # after the checkpoint hook

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            runner.model.iteration = runner.iter

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            done = runner.iter + 1 - int(which.endswith("_background"))
            if log_path is not None and done:
                with open(log_path, "a") as log:
                    log.write(f"{done}\n")

    if which.startswith("mmengine_face"):
        from trainer_ckpt.mmengine import CheckpointHook

        extra = {"background": which.endswith("_background")}
    else:
        from mmengine.hooks import CheckpointHook

        extra = {}
    hook = dict(type=CheckpointHook, interval=1, by_epoch=False, max_keep_ckpts=1, **extra)
    return Runner(
        model=Filler(), work_dir=directory, experiment_name=f"crash-{os.getpid()}-{time.monotonic_ns()}",
        train_dataloader=dict(dataset=list(range(8)), sampler=dict(type="InfiniteSampler", shuffle=False),
                              batch_size=1, collate_fn=dict(type="default_collate"), num_workers=0),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)), train_cfg=dict(by_epoch=False, max_iters=10**6),
        default_hooks=dict(checkpoint=hook, logger=None, param_scheduler=None, timer=None),
        custom_hooks=[dict(type=Log)], resume=resume, default_scope=None, log_level="ERROR",
    )


def _mmengine_child(which: str, directory: str, log_path: str, numel: int) -> None:
    _mmengine_runner(which, directory, numel, resume=False, log_path=log_path).train()


def _restore_mmengine(which: str, directory: str, numel: int) -> Tuple[Optional[int], str]:
    """What a restarted run does: Runner(resume=True); mmengine's own needs its types allowed on torch >= 2.6."""
    from trainer_ckpt.mmengine import mmengine_safe_globals
    from trainer_ckpt.io.loading import allowing

    runner = _mmengine_runner(which.replace("_background", ""), directory, numel, resume=True)
    try:
        with allowing(mmengine_safe_globals() if which == "mmengine" else []):
            runner.train()
        return None, "training did not start"
    except _Stop:
        pass
    except Exception as e:
        return None, f"resume failed: {type(e).__name__}: {str(e)[:120]}"
    finally:
        for hook in runner.hooks:
            if hasattr(hook, "_engine") and hook._engine is not None:
                hook._engine.close()
    i = runner.iter
    if i == 0:
        return None, "no checkpoint found"
    if not torch.equal(runner.model.weight, torch.full((numel,), float(i))):
        return None, f"checkpoint {i} has other contents than its name says"
    return i, ""


def _restore_ignite(which: str, directory: str, numel: int) -> Tuple[Optional[int], str]:
    trainer, model, holder, to_save, handler = _ignite_loop(which.replace("_background", ""), directory, numel)
    if which.startswith("ignite_face"):
        from trainer_ckpt.ignite import latest_checkpoint

        try:
            path = latest_checkpoint(directory)
        except Exception as e:
            return None, f"no good checkpoint: {type(e).__name__}: {str(e)[:120]}"
    else:
        files = sorted(Path(directory).glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        path = files[-1] if files else None
    if path is None:
        return None, "no checkpoint found"
    try:
        type(handler).load_objects(to_save, path)
    except Exception as e:
        return None, f"load failed: {type(e).__name__}: {str(e)[:120]}"
    i = trainer.state.iteration
    if not (torch.equal(model.weight, torch.full((numel,), float(i))) and torch.equal(holder.exp_avg, torch.full((numel // 8,), float(i)))):
        return None, f"checkpoint {i} has other contents than its name says"
    return i, ""


class _LightningStop(Exception):
    """Raised by the Lightning model's first step after a resume: the restored state is in place."""


def _lightning_trainer(which: str, directory: str, numel: int, resume: bool, log_path: Optional[str] = None):
    """A real Lightning Trainer (CPU, one process) whose training step i fills the model's weight (and a
    stand-in of optimizer state) with i, checkpointed after every step by (Lightning's or our)
    ModelCheckpoint: `every_n_train_steps=1, save_top_k=1, save_last=True` (monitor=None allows no
    larger top-k), so each step writes `epoch=0-step=i.ckpt`, then `last.ckpt`, and deletes step i-1's."""
    import lightning.pytorch as pl

    if which.startswith("lightning_face"):
        from trainer_ckpt.lightning import ModelCheckpoint
    else:
        from lightning.pytorch.callbacks import ModelCheckpoint

    class Filler(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", torch.zeros(numel))
            self.register_buffer("exp_avg", torch.zeros(numel // 8))
            self.p = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            if resume:
                raise _LightningStop()
            self.weight.fill_(float(self.global_step + 1))  # the checkpoint after this step has global_step + 1
            self.exp_avg.fill_(float(self.global_step + 1))
            return (self.p * batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD([self.p], lr=0.0)

    class Log(pl.Callback):
        # Lightning runs its checkpoint callbacks last: at a step's start, the previous step's saves are done.
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if log_path is not None and trainer.global_step:
                with open(log_path, "a") as log:
                    log.write(f"{trainer.global_step}\n")

    checkpoint = ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=1, save_last=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=10**6, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=directory,
                         callbacks=[Log(), checkpoint])
    data = torch.utils.data.DataLoader(torch.ones(10**5, 1), batch_size=1)
    return trainer, Filler(), data, checkpoint


def _lightning_child(which: str, directory: str, log_path: str, numel: int) -> None:
    trainer, model, data, _ = _lightning_trainer(which, directory, numel, resume=False, log_path=log_path)
    trainer.fit(model, data)


def _restore_lightning(which: str, directory: str, numel: int) -> Tuple[Optional[int], str]:
    """What a restarted run does: a fresh Trainer's fit(ckpt_path="last")."""
    trainer, model, data, checkpoint = _lightning_trainer(which, directory, numel, resume=True)
    try:
        trainer.fit(model, data, ckpt_path="last")
        return None, "training did not start"
    except _LightningStop:
        pass
    except Exception as e:
        return None, f"resume failed: {type(e).__name__}: {str(e)[:120]}"
    finally:  # Lightning calls no callback teardown when fit raises: our callback's engines (and locks) stay open
        for engine in getattr(checkpoint, "_engines", {}).values():
            engine.close()
    i = trainer.global_step
    if i == 0:
        return None, "no checkpoint found"
    if not (torch.equal(model.weight, torch.full((numel,), float(i))) and torch.equal(model.exp_avg, torch.full((numel // 8,), float(i)))):
        return None, f"checkpoint {i} has other contents than its name says"
    return i, ""


LIGHTNING_TMPDIR = [None]  # --lightning-tmpdir: where Lightning's own puts its temp files (None: beside the run)


def _lightning_tmp(directory: str) -> str:
    """The trial's directory for tempfile (Lightning's own writes its temp file there, then moves it into place)."""
    parent = LIGHTNING_TMPDIR[0] or os.path.dirname(directory)
    return os.path.join(parent, f"{os.path.basename(os.path.dirname(directory))}-{os.path.basename(directory)}.tmp")


def _child(which: str, directory: str, log_path: str, numel: int, mode: str, k: int) -> None:
    torch.set_num_threads(1)
    if which.startswith("lightning"):
        # Lightning's own writes its temp files into tempfile's directory: the trial's, so none outlive the test.
        tempfile.tempdir = _lightning_tmp(directory)
        os.makedirs(tempfile.tempdir, exist_ok=True)
    if mode != "random_time":
        _arm(mode, k, ("replace", "rename") if which.startswith("lightning") else ("replace",))
    if which.startswith("lightning"):
        return _lightning_child(which, directory, log_path, numel)
    if which.startswith("ignite"):
        return _ignite_child(which, directory, log_path, numel)
    if which.startswith("mmengine"):
        return _mmengine_child(which, directory, log_path, numel)
    save = _saver(which, directory, numel)
    with open(log_path, "a") as log:
        for i in range(1, 1_000_000):
            save(i)
            # Background: save i is in flight; i - 1 was complete before save i began.
            done = i - 1 if which.endswith("_background") else i
            if done:
                log.write(f"{done}\n")  # the page cache outlives a killed process
                log.flush()


def _committed(log_path: Path) -> int:
    lines = log_path.read_text().split() if log_path.exists() else []
    return int(lines[-1]) if lines else 0


def _restore(which: str, directory: str, numel: int) -> Tuple[Optional[int], str]:
    """(the restored i, "") or (None, why not)."""
    if which.startswith("fvcore"):
        return _restore_plain_loop(which.replace("_background", ""), directory, numel)
    if which.startswith("ignite"):
        return _restore_ignite(which, directory, numel)
    if which.startswith("mmengine"):
        return _restore_mmengine(which, directory, numel)
    if which.startswith("lightning"):
        return _restore_lightning(which, directory, numel)
    checkpointer = _make("ours" if which.startswith("ours") else which, directory)
    try:
        checkpoint = checkpointer.load_checkpoint()
    except Exception as e:  # what --recover would die of
        return None, f"load failed: {type(e).__name__}: {str(e)[:120]}"
    finally:
        if hasattr(checkpointer, "close"):
            checkpointer.close()
    if checkpoint is None:
        return None, "no checkpoint found"
    model_state, training_state = checkpoint
    i = training_state.get("i")
    if not (torch.equal(model_state["weight"], torch.full((numel,), float(i)))
            and torch.equal(training_state["optimizer"]["exp_avg"], torch.full((numel // 8,), float(i)))):
        return None, f"checkpoint {i} has other contents than its name says"
    return i, ""


def _restore_plain_loop(which: str, directory: str, numel: int) -> Tuple[Optional[int], str]:
    model, holder, checkpointer, _ = _plain_loop(which, directory, numel)
    if not checkpointer.has_checkpoint():
        return None, "no checkpoint found"
    try:  # what a restarted loop does
        extra = checkpointer.resume_or_load("", resume=True)
    except Exception as e:
        return None, f"load failed: {type(e).__name__}: {str(e)[:120]}"
    finally:
        if hasattr(checkpointer, "engine"):
            checkpointer.engine.close()
    if "iteration" not in extra:
        return None, "no checkpoint found"
    i = extra["iteration"] + 1
    if not (torch.equal(model.weight, torch.full((numel,), float(i))) and torch.equal(holder.exp_avg, torch.full((numel // 8,), float(i)))):
        return None, f"checkpoint {i} has other contents than its name says"
    return i, ""


def run_trials(trials: int, size_mb: float, which: str = "ours", seed: int = 0, verbose: bool = False) -> Dict:
    torch.set_num_threads(1)  # no thread pool in the parent: forking stays safe
    rng = random.Random(seed)
    numel = max(8, int(size_mb * (1 << 20) / 4 / 1.125))  # model + 1/8 of it as optimizer state
    context = multiprocessing.get_context("fork")
    bad: Dict[str, int] = collections.Counter()
    per_mode: Dict[str, int] = collections.Counter()
    root = Path(tempfile.mkdtemp(prefix="crash_test_"))
    try:
        for trial in range(trials):
            directory, log_path = root / f"run{trial}", root / f"run{trial}.log"
            directory.mkdir()
            mode = rng.choice(MODES)
            per_mode[mode] += 1
            child = context.Process(target=_child, args=(which, str(directory), str(log_path), numel, mode, rng.randint(4, 15)))
            child.start()
            deadline = time.monotonic() + 30
            while _committed(log_path) < 1 and child.is_alive() and time.monotonic() < deadline:
                time.sleep(0.002)
            # A random moment within the next few saves, unless the armed hook fires first.
            child.join(rng.uniform(0.0, 0.5))
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
            child.join()
            committed = _committed(log_path)
            restored, why = _restore(which, str(directory), numel)
            if restored is None and committed == 0 and why == "no checkpoint found":
                why = ""  # killed during the very first save: nothing was complete, nothing is lost
            elif restored is not None and restored < committed:
                why = f"restored {restored}, but {committed} had completed"
            if why:
                bad[mode] += 1
            if verbose or why:
                print(f"trial {trial:3d} {mode:13s} committed={committed} restored={restored} {why}", flush=True)
            shutil.rmtree(directory, ignore_errors=True)
            shutil.rmtree(_lightning_tmp(str(directory)), ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"trials": trials, "bad": sum(bad.values()), "bad_by_mode": dict(bad), "modes": dict(per_mode)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=16.0, help="checkpoint size (model + optimizer state)")
    parser.add_argument("--checkpointer", default="ours",
                        choices=["ours", "ours_background", "allennlp", "fvcore_face", "fvcore_face_background", "fvcore",
                                 "ignite_face", "ignite_face_background", "ignite",
                                 "mmengine_face", "mmengine_face_background", "mmengine", "lightning_face", "lightning"],
                        help="ours*: trainer_ckpt's AllenNLP face (background: true); allennlp: AllenNLP's own; "
                             "fvcore_face*: a plain loop with trainer_ckpt.fvcore; fvcore: the same loop with fvcore's own; "
                             "ignite_face*: an ignite Engine with trainer_ckpt.ignite; ignite: the same with ignite's own; "
                             "mmengine_face*: an mmengine Runner with trainer_ckpt.mmengine; mmengine: its own hook; "
                             "lightning_face: a Lightning Trainer with trainer_ckpt.lightning.ModelCheckpoint; lightning: its own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ignite-n-saved", type=int, default=1, help="n_saved of the ignite runs (ignite's default: 1)")
    parser.add_argument("--lightning-tmpdir", default=None,
                        help="the Lightning runs: where tempfile (so Lightning's own temp files) goes; default beside the "
                             "checkpoints (one file system); e.g. /dev/shm: a tmpfs /tmp, where its move into place copies")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    if args.checkpointer.startswith("lightning"):
        import warnings

        import lightning.pytorch  # noqa: F401  imported once, here: the children are forked with it

        warnings.filterwarnings("ignore")  # Lightning's advice (num_workers, ...) on every trial
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.ERROR)
    IGNITE_N_SAVED[0] = args.ignite_n_saved
    LIGHTNING_TMPDIR[0] = args.lightning_tmpdir
    result = run_trials(args.trials, args.size_mb, args.checkpointer, args.seed, args.verbose)
    print(f"checkpointer={args.checkpointer} size_mb={args.size_mb} kill moments={result['modes']}")
    print(f"torn_or_unrecoverable={result['bad']}/{result['trials']}" +
          (f" by kill moment: {result['bad_by_mode']}" if result["bad"] else ""))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
