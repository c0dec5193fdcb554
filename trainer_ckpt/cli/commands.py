"""
Operate checkpoints from the shell, for every layout the package writes (AllenNLP pairs, and the
one-file layouts of the fvcore, ignite and mmengine faces) and the peers' own files:

    python -m trainer_ckpt ls DIR [--json] [--policy P]     # one line per checkpoint, and what keeps it
    python -m trainer_ckpt verify DIR [--quarantine]         # sizes and CRC32s (or a load); exit 0 only when all are good
    python -m trainer_ckpt prune DIR --policy P [--dry-run]  # apply a retention policy, explaining each deletion
    python -m trainer_ckpt export DIR --to FILE [--checkpoint NAME|best|latest] [--format torch|safetensors]
    python -m trainer_ckpt diff A B                          # two run directories or checkpoint files

and the same as `allennlp checkpoints ...` (AllenNLP finds the subcommand through a
`.allennlp_plugins` file naming `trainer_ckpt`; it reads `--include-package` only after parsing the
subcommand). Errors are one line each; exit codes: 0 fine (diff: the same state), 1 bad
checkpoints found (diff: the states differ), 2 the command could not run.

Checkpoints load with `weights_only=True`: tensors, containers and numpy's data types, plus the
types of the peer whose layout a directory is (mmengine's message hub when mmengine is installed),
plus those `--safe-globals module.Name,...` names; anything else stops the command (exit 2)
with the refused type's name.
"""
import argparse
import datetime
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from trainer_ckpt.core.engine import Engine, UnsafeCheckpointError
from trainer_ckpt.stores import RNG, NamedFiles, named
from trainer_ckpt.stores.mirrored import Mirrored, is_url, mirrored
from trainer_ckpt import stores
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable

logger = logging.getLogger("trainer_ckpt.cli")  # its 0.1 name, which users may filter on
_PAIR = re.compile(r"^(?P<prefix>.*?)model_state_e\d+_b\d+\.th$")
ONE_FILE = named.ANY_ONE_FILE  # fvcore, ignite and mmengine faces: `{file}`, `.{file}.json`, `.{file}.rng`


class CommandError(Exception):
    """A command that cannot run: its message is the one line printed."""


Options = Optional[Dict[str, Any]]  # --storage-options (fsspec's), for bucket URLs: each call's own


def stores_in(directory: str, storage_options: Options = None) -> List[Tuple[str, Any]]:
    """(what it is, store) for each set of checkpoints in `directory` (a bucket URL: read through a temp copy)."""
    if is_url(directory):
        return _remote_stores(directory, storage_options)
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise CommandError(f"cannot read {directory}: {e.strerror or e}. Give a run directory.") from e
    return _stores(directory, names)


def _stores(directory: str, names: List[str]) -> List[Tuple[str, Any]]:
    prefixes = sorted({m.group("prefix") for m in map(_PAIR.match, names) if m})
    if prefixes:
        return [(f"AllenNLP pairs{f' ({p!r})' if p else ''}", stores.Pairs(directory, p)) for p in prefixes]
    return [("one file per checkpoint", NamedFiles(directory, ONE_FILE))]


def _remote_stores(url: str, storage_options: Options) -> List[Tuple[str, Any]]:
    """A bucket's checkpoints, downloaded into a temp directory when first listed."""
    import tempfile

    copy = tempfile.mkdtemp(prefix="trainer_ckpt-")
    try:
        probe = mirrored(NamedFiles(copy, ONE_FILE), url, storage_options, "trainer_ckpt")
        names = [os.path.basename(p.rstrip("/")) for p in probe.fs.ls(probe.root, detail=False)]
    except FileNotFoundError as e:
        raise CommandError(f"cannot read {url}: no such bucket or prefix. Give a bucket URL with checkpoints.") from e
    except Exception as e:
        raise CommandError(f"cannot read {url}: {type(e).__name__}: {' '.join(str(e).split())}. Check the URL and "
                           "--storage-options (endpoint, credentials).") from e
    return [(kind, Mirrored(store, url, storage_options)) for kind, store in _stores(copy, names)]


# ---- what may load: the peers' own types, and the user's ----------------------------------------

POINTER = "last_checkpoint"  # fvcore's and mmengine's: the checkpoint their resume loads
_MMENGINE_NAME = re.compile(r"^(?:best_.+_)?(?:epoch|iter)_\d+\.pth$")  # epoch_3.pth, iter_2000.pth, best_acc_epoch_3.pth
_FVCORE_NAME = re.compile(r"^model_(?:\d{7}|final)\.pth$")  # model_0000999.pth, model_final.pth
SHOWN = 8  # the checkpoints an error names, the newest


def _pointer_text(directory: str) -> Optional[str]:
    """The contents of `directory`'s last_checkpoint (stripped, as fvcore and mmengine read it); None without one."""
    try:
        with open(os.path.join(directory, POINTER)) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def framework_of(names: Sequence[str], pointer: Optional[str]) -> Optional[str]:
    """
    "mmengine" or "fvcore" when a directory's file names (or its last_checkpoint: mmengine writes
    a path, fvcore a bare name) are that peer's layout; None otherwise.
    """
    if any(_MMENGINE_NAME.match(n) for n in names) or (pointer and os.path.dirname(pointer)):
        return "mmengine"
    if any(_FVCORE_NAME.match(n) for n in names) or pointer:
        return "fvcore"
    return None


def peer_types(names: Sequence[str], pointer: Optional[str]) -> List[Any]:
    """
    The types a peer's own checkpoints hold, for the directory whose files are `names`: numpy's
    data (ignite's DeterministicEngine random state, metrics) everywhere; mmengine's message hub
    (HistoryBuffer) in an mmengine work_dir, when mmengine is installed.
    """
    types = loading.numpy_types()
    if framework_of(names, pointer) == "mmengine" and importlib.util.find_spec("mmengine") is not None:
        from trainer_ckpt.faces._mmengine.hook import mmengine_safe_globals

        types += mmengine_safe_globals()
    return types


def _import_name(name: str) -> Tuple[Any, str, bool]:
    """(the object a dotted name imports as or None, why not, whether a module of it imports): the longest module, then attributes."""
    parts, error = name.split("."), "not a dotted name"
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError as e:
            error = f"{type(e).__name__}: {e}"
            continue
        except Exception as e:  # a module that fails as it imports
            return None, f"importing {'.'.join(parts[:cut])} raised {type(e).__name__}: {' '.join(str(e).split())}", False
        for i, attribute in enumerate(parts[cut:]):
            if not hasattr(obj, attribute):
                return None, f"{'.'.join(parts[:cut + i])} has no {attribute!r}", True
            obj = getattr(obj, attribute)
        return obj, "", True
    return None, error, False


def parse_safe_globals(text: Optional[str]) -> List[Any]:
    """`--safe-globals module.Name[,module.Name...]`: the objects those dotted names import as."""
    found: List[Any] = []
    for name in filter(None, (n.strip() for n in (text or "").split(","))):
        obj, error, _ = _import_name(name)
        if obj is None:
            raise CommandError(f"--safe-globals: cannot import {name!r}: {error}. "
                               "Give each type by its dotted name, e.g. mmengine.logging.HistoryBuffer.")
        found.append(obj)
        if getattr(obj, "__qualname__", None) == "HistoryBuffer" and str(getattr(obj, "__module__", "")).startswith("mmengine"):
            from trainer_ckpt.faces._mmengine.hook import mmengine_safe_globals  # and the statistics its state names

            found += mmengine_safe_globals()
    return found


def _refused_names(error: Exception) -> List[str]:
    return list(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def _phantom(name: str) -> bool:
    """
    A refused "type" whose module is imported already but has no such name: a torn pickle's bytes,
    not a type. (Nothing is imported on a file's word.)
    """
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get(".".join(parts[:cut]))
        if obj is not None:
            for attribute in parts[cut:]:
                if not hasattr(obj, attribute):
                    return True
                obj = getattr(obj, attribute)
            return False
    return False


def _check(engine: Engine, entry: stores.Entry) -> None:
    """
    `engine.verify(entry)`: raises loading.BadCheckpoint, or CommandError for a type safe loading
    refuses. A "type" that imports as nothing is a torn pickle's bytes (a truncated file), not a type: bad.
    """
    try:
        engine.verify(entry)
    except UnsafeCheckpointError as e:
        raise _refused(e, entry, engine) from e


def _refused(error: Exception, entry: stores.Entry, engine: Engine) -> Exception:
    """Safe loading refused a type: one line, with the option that allows it (or BadCheckpoint, for no real type)."""
    types = _refused_names(error)
    phantom = [t for t in types if _phantom(t)]
    if phantom:
        return loading.BadCheckpoint(f"{entry.name} names a type that does not exist ({', '.join(phantom)}): "
                                     "a corrupt or truncated file")
    named = ", ".join(types) or " ".join(str(error).split())
    return CommandError(f"cannot load {entry.name} in {engine.directory}: it holds types that safe loading refuses "
                        f"({named}); nothing in it was run. If you trust it, run again with "
                        f"--safe-globals {','.join(types) or 'module.Name'}.")


def _engines(directory: str, write: Optional[Tuple[str, str]] = None, where: str = "trainer_ckpt",
             storage_options: Options = None, safe_globals: Sequence[Any] = ()) -> List[Tuple[str, Engine]]:
    """
    An engine per store: read-only, or with `write` = (what, how to do without) holding the
    writer's lock, which is refused while a run holds it. Each loads the peer's own types for its
    layout (`peer_types`) and `safe_globals`.
    """
    engines: List[Tuple[str, Engine]] = []
    if write is not None and is_url(directory):
        raise CommandError(f"cannot {write[0]} {directory}: a bucket has no writer's lock to keep a live run out. "
                           "Run it on the run's local directory: what it deletes there goes from the bucket too.")
    for kind, store in stores_in(directory, storage_options):
        try:
            engine = Engine(store, read_only=write is None, where=where, safe_globals=list(safe_globals))
        except Exception as e:  # the lock: a live writer
            for _, engine in engines:
                engine.close()
            raise CommandError(f"cannot {write[0]} {directory}: {str(e).split('. ')[0]}. {write[1]}") from e
        if is_url(directory):
            names, pointer = [e.name for e in engine.entries()], None
        else:
            names, pointer = os.listdir(store.directory), _pointer_text(store.directory)
        engine.safe_globals += peer_types(names, pointer)
        engines.append((kind, engine))
    return engines


def _reason(entry: stores.Entry, error: Exception) -> str:
    """Why `entry` is bad: an empty file says so (a bare `EOFError: ` does not)."""
    for path in entry.paths.values():
        try:
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                return f"{os.path.basename(path)}: 0 bytes: an empty file (an interrupted write?)"
        except OSError:
            pass
    text = " ".join(str(error).split()).split(" This is an internal miniz error.")[0]  # torch's advice follows
    return text + " (the file ends early: a truncated write?)" if text.endswith(("EOFError:", "EOFError: ")) else text


# ---- ls, and what keeps each checkpoint -------------------------------------------------------

def _row(kind: str, entry: stores.Entry, kept_by: Optional[List[str]]) -> Dict[str, Any]:
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
        "kept_by": kept_by,
    }


def _parse_policy(text: str) -> Any:
    """`--policy`: a retention policy as JSON or jsonnet (a block or a type name)."""
    from trainer_ckpt.policies.retention import RetentionPolicy

    try:
        import _jsonnet  # jsonnet is optional: JSON alone without it
    except ImportError:
        _jsonnet = None
    try:
        value = json.loads(_jsonnet.evaluate_snippet("--policy", text) if _jsonnet is not None else text)
    except (RuntimeError, ValueError) as e:
        if re.fullmatch(r"[A-Za-z_][\w.]*", text.strip()):  # a bare type name
            value = text.strip()
        else:
            kind = "JSON or jsonnet" if _jsonnet is not None else "JSON (jsonnet needs `pip install jsonnet`)"
            raise CommandError(f"--policy is not {kind}, got {text!r}: {str(e).splitlines()[0]}. "
                               'Write e.g. \'{"type": "most_recent_by_count", "count": 2}\'.') from e
    try:
        return RetentionPolicy.build("--policy", "policy", value)
    except Exception as e:
        raise CommandError(" ".join(str(e).split())) from e


def run_policies(directory: str) -> Tuple[Dict[str, Any], str]:
    """
    The retention policy of each prefix, from the run's config.json (AllenNLP): trainer_ckpt's
    checkpointer's (or each member's of a group), or AllenNLP's own keep rules. ({}, why) when there is none.
    """
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return {}, "no config.json"
    from allennlp.common import Params

    from trainer_ckpt.faces.allennlp.flat_keys import UNSET, retention_policy_from

    config = Params.from_file(path).get("trainer", {}).get("checkpointer", {}) or {}
    config = config.as_dict(quiet=True) if isinstance(config, Params) else dict(config)
    kind = config.get("type", "default")
    if kind == "default":  # AllenNLP's own checkpointer
        count, age = config.get("keep_most_recent_by_count", 2), config.get("keep_most_recent_by_age")
        return {"": retention_policy_from(None, count, age, UNSET, None)}, "AllenNLP's checkpointer"
    # trainer_ckpt's: its retention from its keys, as DefaultCheckpointer builds it (without
    # building the checkpointer, which would import AllenNLP's training stack).
    if kind in ("trainer_ckpt_group", "trainer_ckpt.CheckpointerGroup"):
        members = [{"type": m} if isinstance(m, str) else m for m in config.get("checkpointers", [])]
        members = [m for m in members if m.get("type", "default") in ("default", "trainer_ckpt.DefaultCheckpointer")]
    elif kind in ("trainer_ckpt", "trainer_ckpt.DefaultCheckpointer"):
        members = [config]
    else:
        return {}, f"config.json: checkpointer type {kind!r} is not trainer_ckpt's"
    policies = {}
    for member in members:
        count_keys = ("keep_most_recent_by_count", "num_serialized_models_to_keep")
        policies[member.get("filename_prefix", "")] = retention_policy_from(
            member.get("retention_policy"),
            *(member.get(k, UNSET if k in count_keys else None) for k in (
                "keep_most_recent_by_count", "keep_most_recent_by_age", "num_serialized_models_to_keep",
                "keep_serialized_model_every_num_seconds")),
        )
    return policies, "config.json"


def _judged(engine: Engine, policy: Any, only_ours: bool, now: float, newest_good: bool = True) -> Dict[Any, List[str]]:
    """
    Key -> the rules that keep it, for the checkpoints `policy` may delete. With `newest_good`
    (prune), the newest checkpoint that verifies is kept too: that reads it, which `ls` does not.
    """
    select = (lambda e: bool(e.record) or isinstance(engine.store, stores.Pairs)) if only_ours else (lambda e: True)
    entries, reasons = engine.judge(policy, select, now)
    judged = {e.key: r for e, r in zip(entries, reasons)}
    for entry in reversed(engine.entries() if newest_good else []):  # the newest that verifies is kept, whatever the policy says
        try:
            _check(engine, entry)
        except loading.BadCheckpoint:
            continue
        if entry.key in judged and "newest complete checkpoint (always kept)" not in judged[entry.key]:
            judged[entry.key].append("newest good checkpoint (always kept)")  # the newest is corrupt
        break
    return judged


def ls(directory: str, as_json: bool = False, policy_text: Optional[str] = None, storage_options: Options = None) -> int:
    rows, now, why = [], time.time(), ""
    if policy_text is not None:
        policies = {None: _parse_policy(policy_text)}
    else:
        try:
            policies, why = run_policies(directory)
        except Exception as e:
            policies, why = {}, f"config.json: {' '.join(str(e).split())}"
            logger.warning("Cannot tell what keeps each checkpoint in %s: %s", directory, why)
    for kind, engine in _engines(directory, storage_options=storage_options):
        prefix = getattr(engine.store, "prefix", "")
        policy = policies.get(None, policies.get(prefix))
        judged = _judged(engine, policy, False, now, newest_good=False) if policy is not None else {}
        rows += [_row(kind, e, judged.get(e.key) if policy is not None else None) for e in engine.entries()]
    if as_json:
        print(json.dumps(rows, indent=1, sort_keys=True))
        return 0
    if not rows:
        print(f"{directory}: no checkpoints")
        return 0
    metrics = [" ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items())) + (" (best)" if r["best"] else "") for r in rows]
    width, mwidth = max(len("checkpoint"), *(len(r["name"]) for r in rows)), max(len("metrics"), *map(len, metrics))
    print(f"{'checkpoint':{width}s}  {'saved':19s}  {'size':>10s}  {'checksum':8s}  {'metrics':{mwidth}s}  kept by")
    for r, m in zip(rows, metrics):
        saved = datetime.datetime.fromtimestamp(r["saved"]).strftime("%Y-%m-%d %H:%M:%S")
        checksum = "recorded" if r["checksummed"] else "none"
        kept = ("-" if r["kept_by"] is None else ", ".join(r["kept_by"]) or "nothing: the next save deletes it")
        print(f"{r['name']:{width}s}  {saved}  {_size(r['size_bytes']):>10s}  {checksum:8s}  {m:{mwidth}s}  {kept}")
    if all(r["kept_by"] is None for r in rows):
        print(f"(kept by: unknown without a retention policy ({why or 'none for this layout'}); give one with --policy)")
    return 0


# ---- verify, prune -----------------------------------------------------------------------------

def verify(directory: str, quarantine: bool = False, storage_options: Options = None, safe_globals: Sequence[Any] = ()) -> int:
    """
    Checks every checkpoint; `quarantine` moves the bad ones into corrupt/ (needs the writer's
    lock). Warns (stderr) when fvcore's or mmengine's `last_checkpoint` would not resume.
    """
    bad, checked, start, good = 0, 0, time.monotonic(), []
    refused = ("quarantine in", "Run verify without --quarantine, or when training has stopped.")
    engines = _engines(directory, write=refused if quarantine else None, where="trainer_ckpt verify",
                       storage_options=storage_options, safe_globals=safe_globals)
    try:
        for _, engine in engines:
            entries = engine.entries()
            total, width = sum(e.info.size_bytes for e in entries), max([24] + [len(e.name) for e in entries])
            for entry in entries:
                try:
                    _check(engine, entry)
                    status = "ok"
                    good.append(entry)
                except loading.BadCheckpoint as e:
                    bad += 1
                    reason = _reason(entry, e)
                    moved = engine.store.quarantine(entry.key) if quarantine else []
                    status = f"BAD: {reason}" + (f" (moved {', '.join(moved)} into corrupt/)" if moved else "")
                checked += entry.info.size_bytes
                print(f"{entry.name:{width}s}  {status}")
                _progress(checked, total, start)
    finally:
        for _, engine in engines:
            engine.close()
    print(f"{bad} bad checkpoint(s) in {directory}" if bad else f"all checkpoints in {directory} are good")
    warning = None if is_url(directory) else pointer_problem(directory, good)
    if warning:
        print(f"trainer_ckpt: warning: {warning}", file=sys.stderr)
    return 1 if bad else 0


def pointer_problem(directory: str, good: Sequence[stores.Entry]) -> Optional[str]:
    """
    Why the `last_checkpoint` of an fvcore or mmengine directory will not resume (empty, or naming
    a file that is not there), and how to fix it; None when it is fine or there is none. `good`:
    the checkpoints that verified, oldest first.
    """
    pointer = _pointer_text(directory)
    if pointer is None:
        return None
    framework = framework_of(os.listdir(directory), pointer)
    if pointer:
        if os.path.isabs(pointer):
            found = os.path.exists(pointer)
        else:  # fvcore joins it to its save_dir; mmengine reads a relative work_dir's path from the run's working directory
            found = os.path.exists(os.path.join(directory, pointer)) or (framework != "fvcore" and (
                os.path.exists(pointer) or os.path.exists(os.path.join(directory, os.path.basename(pointer)))))
        if found:
            return None
        problem = f"names {pointer}, which does not exist"
    else:
        problem = "is empty"
    path = os.path.join(directory, POINTER)
    whose = {"fvcore": "fvcore's resume (resume_or_load)", "mmengine": "mmengine's resume (resume=True)"}.get(
        framework or "", "fvcore's and mmengine's resume")
    # Best checkpoints are not the newest full state (mmengine's hold no optimizer): the newest other one.
    candidates = [e for e in good if not e.name.startswith("best")] or list(good)
    if not candidates:
        return f"{path} {problem}: {whose} will not find a checkpoint, and none here is good. Delete it to start afresh: rm {shlex.quote(path)}"
    newest = next(p for p in candidates[-1].paths.values())  # the main file comes first
    name = os.path.abspath(newest) if framework == "mmengine" else os.path.basename(newest)
    return (f"{path} {problem}: {whose} will not find a checkpoint. Write the newest good one into it: "
            f"printf %s {shlex.quote(name)} > {shlex.quote(path)}")


def prune(directory: str, policy_text: str, dry_run: bool = False, storage_options: Options = None,
          safe_globals: Sequence[Any] = ()) -> int:
    """
    Deletes the checkpoints `policy` does not keep. Never the newest good checkpoint, never a file
    that is not part of a checkpoint of a known layout (a one-file checkpoint without our record
    is left alone: it may be anything), never while a run holds the directory's lock.
    """
    policy = _parse_policy(policy_text)
    refused = ("prune", "Prune when training has stopped, or see what it would delete with --dry-run.")
    engines = _engines(directory, write=None if dry_run else refused, where="trainer_ckpt prune",
                       storage_options=storage_options, safe_globals=safe_globals)
    deleted = 0
    try:
        for _, engine in engines:
            judged = _judged(engine, policy, True, time.time())
            for entry in engine.entries():
                if entry.key not in judged:
                    print(f"keep    {entry.name}: not written by trainer_ckpt (no record), left alone")
                elif judged[entry.key]:
                    print(f"keep    {entry.name}: {', '.join(judged[entry.key])}")
                else:
                    deleted += 1
                    verb = "would delete" if dry_run else "delete "
                    print(f"{verb} {entry.name}: {policy.describe()} does not keep it")
                    if not dry_run:
                        engine.store.remove(entry.key)
    finally:
        for _, engine in engines:
            engine.close()
    print(f"{deleted} checkpoint(s) {'would be ' if dry_run else ''}deleted from {directory}")
    return 0


# ---- export, diff ------------------------------------------------------------------------------

def _pick(directory: str, which: str, storage_options: Options = None, safe_globals: Sequence[Any] = ()) -> Tuple[Engine, stores.Entry]:
    """The checkpoint `which` names in `directory`: a name (`e3_b0`, `model_6.pt`), `best` or `latest` (the newest good)."""
    found = [(engine, e) for _, engine in _engines(directory, storage_options=storage_options, safe_globals=safe_globals)
             for e in engine.entries()]
    if not found:
        raise CommandError(f"no checkpoints in {directory}. Give a run directory with checkpoints.")
    if which in ("latest", "best"):
        candidates = sorted(found, key=lambda f: f[1].info.time)
        if which == "best":
            candidates = [f for f in candidates if f[1].info.is_best_so_far or f[1].name.startswith("best")]
            if not candidates:
                raise CommandError(f"no checkpoint in {directory} is marked best. Name one with --checkpoint.")
        for engine, entry in reversed(candidates):
            try:
                _check(engine, entry)
                return engine, entry
            except loading.BadCheckpoint as e:
                logger.warning("Checkpoint %s is not usable (%s); trying an older one", entry.name, _reason(entry, e))
        raise CommandError(f"no {which} checkpoint in {directory} verifies. Run verify on it.")
    for engine, entry in found:
        if which == entry.name:
            return engine, entry
    shown = sorted(found, key=lambda f: f[1].info.time)[-SHOWN:]
    names = ", ".join(e.name for _, e in shown)
    if len(shown) < len(found):
        names += f" ({len(shown)} of {len(found)} shown, the newest; ls lists them all)"
    raise CommandError(f"no checkpoint named {which!r} in {directory}, got {names}. Use one of those, best or latest.")


def _resolve(target: str, which: str, storage_options: Options = None, safe_globals: Sequence[Any] = ()) -> Tuple[Engine, stores.Entry]:
    """A run directory (its `which` checkpoint) or one checkpoint's file."""
    if os.path.isdir(target) or is_url(target):
        return _pick(target, which, storage_options, safe_globals)
    directory, base = os.path.split(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise CommandError(f"{target} is not a checkpoint's file or a run directory. Give one of those.")
    for _, engine in _engines(directory, safe_globals=safe_globals):
        for entry in engine.entries():
            if base in {os.path.basename(p) for p in entry.paths.values()}:
                return engine, entry
    raise CommandError(f"{target} is not a checkpoint's file or a run directory. Give one of those.")


def _load(engine: Engine, entry: stores.Entry) -> Dict[str, Any]:
    try:
        return engine.load(entry, [r for r in entry.paths if r != RNG])
    except (UnsafeCheckpointError, loading.BadCheckpoint) as e:
        error = _refused(e, entry, engine) if isinstance(e, UnsafeCheckpointError) else e
        if isinstance(error, CommandError):
            raise error from e
        raise CommandError(f"cannot load {entry.name} in {engine.directory}: {_reason(entry, error)}") from e


def model_weights(loaded: Dict[str, Any], key: Optional[str], name: str) -> Dict[str, Any]:
    """The model's state dict in a loaded checkpoint: AllenNLP's model file, mmengine's `state_dict`, `model` (fvcore, ignite)."""
    obj = loaded.get(stores.MODEL, loaded.get("checkpoint"))
    if key:
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                have = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                raise CommandError(f"--key {key}: {name} has no {part!r}, got {have}. Give the path to the weights' dict.")
            obj = obj[part]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    import torch

    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        have = ", ".join(map(str, list(obj)[:12])) if isinstance(obj, dict) else type(obj).__name__
        raise CommandError(f"cannot tell the model's weights in {name}, got keys {have}. Name them with --key.")
    return obj


def export(directory: str, which: str, to: str, fmt: str, key: Optional[str], storage_options: Options = None,
           safe_globals: Sequence[Any] = ()) -> int:
    """The model's weights alone into `to` (written atomically), with its SHA-256."""
    import torch

    if "://" in to:  # it would become a local folder named "s3:"
        raise CommandError(f"--to must be a local file, got {to!r}. Export to a local file, then copy it to the bucket.")
    engine, entry = _resolve(directory, which, storage_options, safe_globals)
    weights = model_weights(_load(engine, entry), key, entry.name)
    if fmt == "safetensors":
        try:
            from safetensors.torch import save as to_bytes
        except ImportError as e:
            raise CommandError("--format safetensors needs the safetensors package, got none installed. pip install safetensors.") from e
        # safetensors refuses tensors that share memory: each gets its own copy.
        payload = to_bytes({k: v.detach().contiguous().clone() for k, v in weights.items()}, metadata={"source": entry.name})
        durable.atomic_write(to, lambda f: f.write(payload))
    else:
        durable.atomic_write(to, lambda f: torch.save(dict(weights), f))
    digest = hashlib.sha256()
    with open(to, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    size = os.path.getsize(to)
    print(f"exported {entry.name} from {engine.directory}: {len(weights)} tensors, {_size(size)}, to {to} ({fmt})")
    print(f"sha256 {digest.hexdigest()}  {to}")
    return 0


def _flat(obj: Any, prefix: str, out: Dict[str, Any]) -> Dict[str, Any]:
    """Tensors and numbers by dotted path."""
    import torch

    if torch.is_tensor(obj) or (isinstance(obj, (int, float)) and not isinstance(obj, bool)):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flat(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flat(v, f"{prefix}.{i}" if prefix else str(i), out)
    return out


def _config(engine: Engine, loaded: Dict[str, Any]) -> Dict[str, Any]:
    """The run's configuration, flattened: AllenNLP's config.json, else mmengine's `meta.cfg` text by line."""
    path = os.path.join(engine.directory, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return _flat_any(json.load(f), "")
    checkpoint = loaded.get("checkpoint")
    cfg = checkpoint.get("meta", {}).get("cfg") if isinstance(checkpoint, dict) and isinstance(checkpoint.get("meta"), dict) else None
    if isinstance(cfg, str):
        return {f"cfg line {i + 1}": line for i, line in enumerate(cfg.splitlines())}
    return {}


def _flat_any(obj: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(obj, dict) and obj:
        return {k: v for key, val in obj.items() for k, v in _flat_any(val, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: obj}


_TIMES = re.compile(r"(?:^|[._])(?:time|eta|data_time|timestamp|datetime)$")  # when, not what: metadata


def _counter(x: Any, y: Any) -> bool:
    """An integer tensor, or one float holding a whole number on both sides (an optimizer's `step`): a count, not a weight."""
    if not x.is_floating_point():
        return True
    return x.numel() == 1 and bool((x == x.round()).all() and (y == y.round()).all())


def diff(a: str, b: str, which: str, as_json: bool = False, storage_options: Options = None,
         safe_globals: Sequence[Any] = ()) -> int:
    """
    Config keys, tensors and values (the state: differences, exit 1), and versions, world size and
    times (metadata: reported, exit 0 when the state is the same) between two checkpoints. The
    largest change is among float tensors; counters (integer tensors, a whole-numbered step)
    are named apart.
    """
    import torch

    sides = []
    for target in (a, b):
        engine, entry = _resolve(target, which, storage_options, safe_globals)
        loaded = _load(engine, entry)
        # Our resume state (random generators, data order, the config) inside AllenNLP's training
        # state: one line, not a thousand.
        resume = loaded.get(stores.TRAINING, {}).pop("trainer_ckpt_resume", None) if isinstance(loaded.get(stores.TRAINING), dict) else None
        sides.append((engine, entry, loaded, _flat(loaded, "", {}), _flat(resume, "", {})))
    (ea, na, la, ta, resume_a), (eb, nb, lb, tb, resume_b) = sides
    changes: List[Dict[str, Any]] = []
    metadata: List[Dict[str, Any]] = []  # not state: versions, world size, times
    ca, cb = _config(ea, la), _config(eb, lb)
    for k in sorted(set(ca) | set(cb)):
        if ca.get(k) != cb.get(k):
            changes.append({"what": "config", "key": k, "a": ca.get(k), "b": cb.get(k)})
    unrecorded = [side for side, n in (("a", na), ("b", nb)) if not n.record]
    for side in unrecorded:
        metadata.append({"what": "record", "key": side, "a": None, "b": None,
                         "note": f"{side} has no record (not written by trainer_ckpt): its versions and world size are unknown"})
    if not unrecorded:
        ra, rb = (_flat_any({"versions": n.record.get("versions"), "world_size": n.record.get("world_size")}, "") for n in (na, nb))
        for k in sorted(set(ra) | set(rb)):
            if ra.get(k) != rb.get(k):
                what, key = ("version", k.split(".", 1)[1]) if k.startswith("versions.") else ("record", k)
                metadata.append({"what": what, "key": key, "a": ra.get(k), "b": rb.get(k)})
    identical, largest, counters = 0, (0.0, ""), (0.0, "")
    for k in sorted(set(ta) | set(tb)):
        if k not in ta or k not in tb:
            changes.append({"what": "tensor" if torch.is_tensor(ta.get(k, tb.get(k))) else "value", "key": k,
                            "a": "present" if k in ta else "missing", "b": "present" if k in tb else "missing"})
            continue
        x, y = ta[k], tb[k]
        if not torch.is_tensor(x) or not torch.is_tensor(y):
            if x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
                time_like = bool(_TIMES.search(k))
                (metadata if time_like else changes).append({"what": "time" if time_like else "value", "key": k, "a": x, "b": y})
            else:
                identical += 1
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            changes.append({"what": "tensor", "key": k, "a": f"{x.dtype} {list(x.shape)}", "b": f"{y.dtype} {list(y.shape)}"})
        elif torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())):
            identical += 1
        else:
            d = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
            counter = _counter(x, y)
            if counter:
                counters = max(counters, (d, k))
            else:
                largest = max(largest, (d, k))
            changes.append({"what": "tensor", "key": k, "max_abs_diff": d, **({"counter": True} if counter else {})})
    differing = [k for k in set(resume_a) | set(resume_b) if not _same(resume_a.get(k), resume_b.get(k))]
    if differing:
        changes.append({"what": "resume", "key": "trainer_ckpt_resume", "differ": len(differing), "of": len(set(resume_a) | set(resume_b))})
    if as_json:
        print(json.dumps({"a": f"{ea.directory}/{na.name}", "b": f"{eb.directory}/{nb.name}", "identical": identical,
                          "differences": changes, "metadata": metadata}, indent=1, default=str))
        return 1 if changes else 0
    print(f"a: {na.name} in {ea.directory}")
    print(f"b: {nb.name} in {eb.directory}")
    config = [c for c in changes if c["what"] == "config"]
    for c in config + metadata + [c for c in changes if c["what"] != "config"]:  # what it ran with, then what it holds
        if "note" in c:
            print(f"{c['what']:8s} {c['note']}")
        elif "max_abs_diff" in c:
            print(f"tensor   {c['key']}: max abs diff {c['max_abs_diff']:.6g}{' (a counter)' if c.get('counter') else ''}")
        elif c["what"] == "resume":
            print(f"resume   {c['key']} (random state, data order, config): {c['differ']} of {c['of']} values differ")
        else:
            print(f"{c['what']:8s} {c['key']}: {c['a']} -> {c['b']}")
    differ = sum(1 for c in changes if c["what"] in ("tensor", "value"))
    tail = f" (largest max abs diff {largest[0]:.6g} in {largest[1]})" if largest[1] else ""
    if counters[1]:
        tail += f" (counters: largest change {counters[0]:.6g} in {counters[1]})"
    print(f"{identical + differ} tensors and values compared: {identical} identical, {differ} differ{tail}")
    if metadata and not changes:
        print("the same state: only metadata (versions, world size, times) differs")
    return 1 if changes else 0


def _same(x: Any, y: Any) -> bool:
    import torch

    if torch.is_tensor(x) and torch.is_tensor(y):
        return x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
    return type(x) is type(y) and x == y


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


# ---- the command line --------------------------------------------------------------------------

STORAGE_HELP = "for a bucket URL (s3://bucket/run): fsspec's options as JSON, e.g. endpoint and credentials"
SAFE_GLOBALS_HELP = ("types to allow when loading, besides tensors, containers, numpy data and the peer's own types "
                     "(mmengine's in its work_dirs): module.Name[,module.Name...], e.g. mymodule.MyMetric")
POLICY_HELP = 'a retention policy, JSON or jsonnet: \'{"type": "most_recent_by_count", "count": 2}\''


def add_commands(subparsers: Any) -> None:
    """The commands, as subcommands of `parser` (ours, or AllenNLP's `checkpoints`)."""
    p = subparsers.add_parser("ls", description="One line per checkpoint in a run directory, with what keeps it "
                              "(the run's retention policy from its config.json, or --policy).", help="list checkpoints")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--policy", help=POLICY_HELP + " (default: the run's, from config.json)")
    p.add_argument("--include-package", action="append", default=[], help="a package with your policies")
    p.add_argument("--storage-options", help=STORAGE_HELP)
    p.set_defaults(command=lambda a, options: ls(a.directory, a.json, a.policy, options))
    p = subparsers.add_parser("verify", description="Check every checkpoint's size and CRC32 against its record "
                              "(a file without one: that it loads).", help="check checkpoints")
    p.add_argument("directory")
    p.add_argument("--quarantine", action="store_true", help="move bad checkpoints into corrupt/")
    p.add_argument("--safe-globals", help=SAFE_GLOBALS_HELP)
    p.add_argument("--storage-options", help=STORAGE_HELP)
    p.set_defaults(command=lambda a, options: verify(a.directory, a.quarantine, options, a.trusted))
    p = subparsers.add_parser("prune", description=prune.__doc__.strip().split("\n\n")[0].replace("\n    ", " ")
                              + " Applies a retention policy to an existing directory.", help="apply a retention policy")
    p.add_argument("directory")
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--include-package", action="append", default=[], help="a package with your policies")
    p.add_argument("--safe-globals", help=SAFE_GLOBALS_HELP)
    p.add_argument("--storage-options", help=STORAGE_HELP)
    p.set_defaults(command=lambda a, options: prune(a.directory, a.policy, a.dry_run, options, a.trusted))
    p = subparsers.add_parser("export", description="Write one checkpoint's model weights alone to a file, "
                              "atomically, and print its SHA-256.", help="export model weights")
    p.add_argument("directory", help="a run directory, or one checkpoint's file")
    p.add_argument("--checkpoint", default="latest", help="a name (e3_b0, model_6.pt), best, or latest (default): the newest good one")
    p.add_argument("--to", required=True, help="the file to write")
    p.add_argument("--format", choices=("torch", "safetensors"), default="torch")
    p.add_argument("--key", help="dotted path to the weights inside the checkpoint, when they cannot be told")
    p.add_argument("--safe-globals", help=SAFE_GLOBALS_HELP)
    p.add_argument("--storage-options", help=STORAGE_HELP)
    p.set_defaults(command=lambda a, options: export(a.directory, a.checkpoint, a.to, a.format, a.key, options, a.trusted))
    p = subparsers.add_parser("diff", description="Config keys, values and per-tensor max abs difference between "
                              "two checkpoints (each a run directory or a checkpoint's file); versions, world size and "
                              "times are reported as metadata. Exit 0: the same state; 1: the states differ.",
                              help="compare two checkpoints")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--checkpoint", default="latest", help="which checkpoint of a run directory (default: latest)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--safe-globals", help=SAFE_GLOBALS_HELP)
    p.add_argument("--storage-options", help=STORAGE_HELP)
    p.set_defaults(command=lambda a, options: diff(a.a, a.b, a.checkpoint, a.json, options, a.trusted))


def run(args: argparse.Namespace) -> int:
    try:
        for package in getattr(args, "include_package", None) or []:
            try:
                importlib.import_module(package)
            except ImportError as e:
                raise CommandError(f"--include-package {package}: cannot import it, got {type(e).__name__}: {e}. "
                                   "Give a package installed here (or on PYTHONPATH).") from e
        options = None  # this call's own: nothing carries over to the next call in the process
        if getattr(args, "storage_options", None):
            try:
                options = json.loads(args.storage_options)
            except ValueError:
                options = None
            if not isinstance(options, dict):
                raise CommandError(f"--storage-options must be a JSON object, got {args.storage_options!r}. "
                                   'Write e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'.')
        args.trusted = parse_safe_globals(getattr(args, "safe_globals", None))
        return args.command(args, options)
    except CommandError as e:
        print(f"trainer_ckpt: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # anything else: still one line (TRAINER_CKPT_TRACEBACK=1 shows where)
        if os.environ.get("TRAINER_CKPT_TRACEBACK"):
            raise
        print(f"trainer_ckpt: {getattr(args, 'name', None) or getattr(args, 'checkpoints_command', None) or 'the command'} failed: {type(e).__name__}: "
              f"{' '.join(str(e).split())} (TRAINER_CKPT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    prog = "trainer-ckpt" if os.path.basename(sys.argv[0] or "") == "trainer-ckpt" else "python -m trainer_ckpt"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="name", required=True))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run(parser.parse_args(argv))


def _register_allennlp_subcommand() -> None:
    """Only inside AllenNLP's command line (importing it costs seconds): it has imported its commands by now."""
    if "allennlp.commands" not in sys.modules:
        return
    from allennlp.commands.subcommand import Subcommand

    @Subcommand.register("checkpoints", exist_ok=True)
    class Checkpoints(Subcommand):
        requires_plugins = False

        def add_subparser(self, parser: argparse._SubParsersAction) -> argparse.ArgumentParser:
            subparser = parser.add_parser(self.name, description=__doc__.split("\n\n")[0], help="operate checkpoints")
            add_commands(subparser.add_subparsers(dest="checkpoints_command", required=True))
            subparser.set_defaults(func=lambda a: sys.exit(run(a)))
            return subparser


_register_allennlp_subcommand()
