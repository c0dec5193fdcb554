"""
The architecture, as a test: each layer imports only the layers below it, and no private name of
another module; every 0.1 import path still works.
"""
import ast
import os
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "trainer_ckpt")
# What each layer may import (besides itself and the shared vocabulary, checkpoint_info).
ALLOWED = {
    "io": set(),
    "stores": {"io"},
    "policies": set(),
    "core": {"io", "stores", "policies"},
    "faces": {"core", "io", "stores", "policies", "faces", "cli"},  # the AllenNLP face registers the CLI's subcommand
    "cli": {"core", "io", "stores", "policies", "faces"},
}


def imports_of(path):
    """(imported module, names) of every `import`/`from ... import` in a file, at any depth."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "trainer_ckpt" and parts[1] in ALLOWED else None


def test_each_layer_imports_only_the_layers_below_it_and_no_private_names():
    problems = []
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            module = "trainer_ckpt." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            mine = layer(module)
            if mine is None:
                continue  # the public, thin modules at the top
            for imported, names in imports_of(path):
                theirs = layer(imported)
                if imported.startswith("trainer_ckpt") and theirs is None and imported not in (
                        "trainer_ckpt", "trainer_ckpt.checkpoint_info"):
                    problems.append(f"{module} imports {imported}, a public module above the layers")
                if theirs is not None and theirs != mine and theirs not in ALLOWED[mine]:
                    problems.append(f"{module} ({mine}) imports {imported} ({theirs})")
                same_package = imported.rsplit(".", 1)[0] == module.rsplit(".", 1)[0]
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if imported.startswith("trainer_ckpt") and private and not same_package:
                    problems.append(f"{module} imports private {private} of {imported}")
    assert not problems, "\n".join(problems)


def module_graph():
    """{module: the package's modules it imports, at any depth (function-level imports count)}."""
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                modules["trainer_ckpt." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    graph = {}
    for module, path in modules.items():
        targets = set()
        for imported, names in imports_of(path):
            for target in [f"{imported}.{n}" for n in names if f"{imported}.{n}" in modules] or [imported]:
                if target in modules and target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph):
    """Every set of modules that import each other, directly or around a loop (Tarjan's components)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail
    assert cycles(module_graph()) == []


def test_every_0_1_import_path_works():
    code = """
import sys
import trainer_ckpt
assert "allennlp" not in sys.modules
from trainer_ckpt import (CheckpointInfo, KeepAll, KeepAllOf, KeepAny, KeepBest, KeepEveryNumBatches, KeepEveryNumEpochs,
    KeepMostRecentByAge, KeepMostRecentByCount, KeepOnePerTimeWindow, KeepWithinDiskQuota, RetentionPolicy, SaveAll, SaveAny,
    SaveAt, SaveBestSoFar, SaveCompletedEpochs, SaveEveryNumBatches, SaveEveryNumEpochs, SaveEveryNumSeconds, SaveLastEpoch,
    SaveNever, SaveNotBefore, SavePolicy)
from trainer_ckpt.save_policies import SaveEveryNumBatches as S
from trainer_ckpt.retention_policies import KeepMostRecentByCount as K
from trainer_ckpt.checkpoint_info import CheckpointInfo as C
from trainer_ckpt.data import ResumableLoader
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer, LAYOUT
from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint
from trainer_ckpt.mmengine import CheckpointHook, mmengine_safe_globals
from trainer_ckpt.cli import main
assert S is SaveEveryNumBatches and K is KeepMostRecentByCount and C is CheckpointInfo
assert S.__module__ == "trainer_ckpt.save_policies" and K.__module__ == "trainer_ckpt.retention_policies"
from trainer_ckpt import DefaultCheckpointer, Checkpointer, CheckpointerGroup
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["ok"], out.stderr[-3000:]
