"""
Proof that a resumed run resumed, for every face.

Every training script the tests run reseeds the same way at start-up, so a run that silently
starts over from the beginning ends with the same weights as an uninterrupted one: the final
comparison of an exact-resume test cannot tell a resume from a restart. So each of those scripts
notes, when a process is about to train its first step, how far training had got: one JSON line
in `starts.jsonl` in its run directory, {"rank": R, "done": D}. `done` counts in the face's own
terms what was already trained: iterations for fvcore, ignite and mmengine, [epochs, batches] for
AllenNLP (fixtures/plugins/kill_switch.py). A fresh start notes 0 (or [0, 0]); a resume notes the
point of the checkpoint it resumed from.

    with resumed(run_dir, at=35):      # the run(s) in the block resume at iteration 35,
        train(run_dir)                 # not at 0, and redo no epoch (AllenNLP's metrics files)
    assert_starts(run_dir, 0, 35)      # or: the whole history of the directory's processes

Writers: `note_start` (scripts/plain_loop.py, scripts/ignite_loop.py, scripts/mmengine_run.py,
tests/fsdp_rank.py, tests/lightning_fsdp_rank.py, fixtures/plugins/kill_switch.py, and the preemption tests' runs).
"""
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

STARTS = "starts.jsonl"


def note_start(directory: Any, done: Any, rank: int = 0) -> None:
    """Called by a training process right before its first training step."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, STARTS), "a") as f:
        f.write(json.dumps({"rank": rank, "done": done}) + "\n")


def _point(done: Any) -> Any:
    return tuple(done) if isinstance(done, list) else done


def is_fresh(done: Any) -> bool:
    return done == 0 or (isinstance(done, tuple) and not any(done))


def starts(directory: Any) -> Dict[int, List[Any]]:
    """{rank: [done of each process start, oldest first]}; empty when no process noted a start."""
    path = Path(directory) / STARTS
    history: Dict[int, List[Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            history.setdefault(entry["rank"], []).append(_point(entry["done"]))
    return history


def assert_starts(directory: Any, *expected: Any, ranks: int = 1) -> None:
    """The processes of each of `ranks` ranks began training in `directory` at `expected`, in
    order (the first may be a fresh start); every later one is a resume, and a resume at the
    point a fresh start has proves nothing, so none may be."""
    expected = tuple(_point(e) for e in expected)
    assert expected and not any(is_fresh(e) for e in expected[1:]), f"resume points {expected} include a fresh start"
    got = starts(directory)
    assert got == {rank: list(expected) for rank in range(ranks)}, (
        f"processes in {directory} started training at {got} (rank: [steps done at each start]), "
        f"expected {list(expected)} on each of {ranks} rank(s)"
    )


def _metrics_files(directory: Path) -> Dict[str, int]:
    """AllenNLP's metrics_epoch_N.json files and their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("metrics_epoch_*.json")} if directory.exists() else {}


@contextlib.contextmanager
def resumed(directory: Any, at: Any, ranks: int = 1) -> Iterator[None]:
    """The run inside the block resumes `directory` at `at` (not a fresh start): each of `ranks`
    ranks starts exactly one process, at `at`; epochs finished before it are not trained again
    (AllenNLP rewrites metrics_epoch_N.json for every epoch it trains)."""
    at = _point(at)
    assert not is_fresh(at), f"a resume at {at} cannot be told from a fresh start"
    directory = Path(directory)
    before, metrics = starts(directory), _metrics_files(directory)
    yield
    after = starts(directory)
    for rank in range(ranks):
        new = after.get(rank, [])[len(before.get(rank, [])):]
        assert new == [at], f"rank {rank} started training at {new} (steps done), expected to resume at {at}"
    assert set(after) == set(range(ranks)) | set(before), f"unexpected ranks started: {sorted(after)}"
    if isinstance(at, tuple):
        redone = [n for n, t in metrics.items() if int(n[len("metrics_epoch_"):-len(".json")]) < at[0]
                  and (directory / n).stat().st_mtime_ns != t]
        assert not redone, f"resumed at {at}, but epochs were trained again: {redone} rewritten"


ALLENNLP_STATE = re.compile(r"^model_state_e(\d+)_b(\d+)\.th$")


def newest_allennlp_checkpoint(directory: Any, prefix: str = "") -> Optional[Tuple[int, int]]:
    """The newest (epochs, batches) with both state files in an AllenNLP run directory, read
    from the file names alone (not through the library under test)."""
    points = []
    for name in os.listdir(directory):
        match = ALLENNLP_STATE.match(name[len(prefix):]) if name.startswith(prefix) else None
        if match and os.path.exists(os.path.join(directory, f"{prefix}training_state_e{match[1]}_b{match[2]}.th")):
            points.append((int(match[1]), int(match[2])))
    return max(points, default=None)


def assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Two nested states (a loader's: dicts, lists, tensors, numbers) are equal, tensors by `torch.equal`."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
