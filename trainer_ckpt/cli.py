"""
Operate checkpoints from the shell, for every layout the package writes (AllenNLP pairs, and the
one-file layouts of the fvcore, ignite and mmengine faces) and the peers' own files:

    python -m trainer_ckpt ls DIR [--json]          # one line per checkpoint
    python -m trainer_ckpt verify DIR [--quarantine] # sizes and CRC32s (or a load); exit 0 only when all are good

and the same as `allennlp checkpoints ...` (AllenNLP finds the subcommand through a
`.allennlp_plugins` file naming `trainer_ckpt`; it reads `--include-package` only after parsing the
subcommand). Errors are one line each; exit codes: 0 fine, 1 bad checkpoints found, 2 the command
could not run.
"""
import argparse
import datetime
import json
import logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from trainer_ckpt import storage
from trainer_ckpt.engine import RNG, Engine, Layout, NamedFiles

logger = logging.getLogger(__name__)
_PAIR = re.compile(r"^(?P<prefix>.*?)model_state_e\d+_b\d+\.th$")
# fvcore, ignite and mmengine faces: `{file}` with hidden `.{file}.json` and `.{file}.rng` beside it.
ONE_FILE = Layout(
    files=lambda name: {"checkpoint": name, RNG: f".{name}.rng"},
    record=lambda name: f".{name}.json",
    parse=lambda base: base if base.endswith((".pth", ".pt")) and not base.startswith(".") else None,
)


class CommandError(Exception):
    """A command that cannot run: its message is the one line printed."""


def stores(directory: str) -> List[Tuple[str, Any]]:
    """(what it is, store) for each set of checkpoints in `directory`."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise CommandError(f"cannot read {directory}: {e.strerror or e}. Give a run directory.") from e
    prefixes = sorted({m.group("prefix") for m in map(_PAIR.match, names) if m})
    if prefixes:
        return [(f"AllenNLP pairs{f' ({p!r})' if p else ''}", storage.Pairs(directory, p)) for p in prefixes]
    return [("one file per checkpoint", NamedFiles(directory, ONE_FILE))]


def _row(kind: str, entry: storage.Entry) -> Dict[str, Any]:
    info, record = entry.info, entry.record
    return {
        "name": entry.name,
        "layout": kind,
        "progress": {"epochs_completed": info.epochs_completed, "batches_in_epoch_completed": info.batches_in_epoch_completed,
                     "total_batches_completed": info.total_batches_completed} if record else None,
        "saved": info.time,
        "size_bytes": info.size_bytes,
        "metrics": dict(info.metrics),
        "best": bool(info.is_best_so_far),
        "checksummed": bool(record.get("files")),
        "files": sorted(os.path.basename(p) for p in entry.paths.values()),
    }


def ls(directory: str, as_json: bool = False) -> int:
    rows = []
    for kind, store in stores(directory):
        rows += [_row(kind, e) for e in Engine(store, read_only=True).entries()]
    if as_json:
        print(json.dumps(rows, indent=1, sort_keys=True))
        return 0
    if not rows:
        print(f"{directory}: no checkpoints")
        return 0
    width = max(len("checkpoint"), *(len(r["name"]) for r in rows))
    print(f"{'checkpoint':{width}s}  {'saved':19s}  {'size':>10s}  {'checksum':8s}  metrics")
    for r in rows:
        saved = datetime.datetime.fromtimestamp(r["saved"]).strftime("%Y-%m-%d %H:%M:%S")
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items())) + (" (best)" if r["best"] else "")
        checksum = "recorded" if r["checksummed"] else "none"
        print(f"{r['name']:{width}s}  {saved}  {_size(r['size_bytes']):>10s}  {checksum:8s}  {metrics}".rstrip())
    return 0


def verify(directory: str, quarantine: bool = False) -> int:
    """Checks every checkpoint; `quarantine` moves the bad ones into corrupt/ (needs the writer's lock)."""
    bad, checked, start = 0, 0, time.monotonic()
    for kind, store in stores(directory):
        try:
            engine = Engine(store, read_only=not quarantine, where="trainer_ckpt verify")
        except Exception as e:  # the lock: a live writer
            raise CommandError(f"cannot quarantine in {directory}: {str(e).split('. ')[0]}. Run verify without "
                               "--quarantine, or when training has stopped.") from e
        try:
            entries = engine.entries()
            total, width = sum(e.info.size_bytes for e in entries), max([24] + [len(e.name) for e in entries])
            for entry in entries:
                try:
                    engine.verify(entry)
                    status = "ok"
                except storage.BadCheckpoint as e:
                    bad += 1
                    moved = store.quarantine(entry.key) if quarantine else []
                    status = f"BAD: {e}" + (f" (moved {', '.join(moved)} into corrupt/)" if moved else "")
                checked += entry.info.size_bytes
                print(f"{entry.name:{width}s}  {status}")
                _progress(checked, total, start)
        finally:
            engine.close()
    print(f"{bad} bad checkpoint(s) in {directory}" if bad else f"all checkpoints in {directory} are good")
    return 1 if bad else 0


def _progress(done: int, total: int, start: float) -> None:
    if total < (256 << 20) or not sys.stderr.isatty():
        return
    rate = done / max(time.monotonic() - start, 1e-9)
    print(f"\r{_size(done)} / {_size(total)} checked, {_size(rate)}/s", end="" if done < total else "\n", file=sys.stderr)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def add_commands(subparsers: Any) -> None:
    """The commands, as subcommands of `parser` (ours, or AllenNLP's `checkpoints`)."""
    p = subparsers.add_parser("ls", description="One line per checkpoint in a run directory.", help="list checkpoints")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(command=lambda a: ls(a.directory, a.json))
    p = subparsers.add_parser("verify", description="Check every checkpoint's size and CRC32 against its record "
                              "(a file without one: that it loads).", help="check checkpoints")
    p.add_argument("directory")
    p.add_argument("--quarantine", action="store_true", help="move bad checkpoints into corrupt/")
    p.set_defaults(command=lambda a: verify(a.directory, a.quarantine))


def run(args: argparse.Namespace) -> int:
    try:
        return args.command(args)
    except CommandError as e:
        print(f"trainer_ckpt: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_ckpt", description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="name", required=True))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run(parser.parse_args(argv))


def _register_allennlp_subcommand() -> None:
    try:
        from allennlp.commands.subcommand import Subcommand
    except ImportError:
        return

    @Subcommand.register("checkpoints", exist_ok=True)
    class Checkpoints(Subcommand):
        requires_plugins = False

        def add_subparser(self, parser: argparse._SubParsersAction) -> argparse.ArgumentParser:
            subparser = parser.add_parser(self.name, description=__doc__.split("\n\n")[0], help="operate checkpoints")
            add_commands(subparser.add_subparsers(dest="checkpoints_command", required=True))
            subparser.set_defaults(func=lambda a: sys.exit(run(a)))
            return subparser


_register_allennlp_subcommand()
