"""
Registration with AllenNLP whatever the import order (each order in a fresh interpreter), the
policies without AllenNLP, and the policies' own registry (plain Python, AllenNLP's API).
"""
import os
import pickle
import subprocess
import sys
from typing import List, Optional, Sequence

import pytest

from tests.conftest import ROOT
from trainer_ckpt import CheckpointInfo, ConfigurationError, KeepAll, KeepMostRecentByCount, RetentionPolicy
from trainer_ckpt import SaveCompletedEpochs, SaveEveryNumBatches, SavePolicy
from trainer_ckpt.policies.registry import CheckedRegistrable


def python(code: str, *args: str) -> List[str]:
    """Runs `code` in a fresh interpreter (the repository and fixtures/plugins importable); its stdout lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "fixtures" / "plugins")])}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


TRAINER_CKPT_FIRST = """
import sys
import trainer_ckpt
assert not [m for m in sys.modules if m.split(".")[0] == "allennlp"], "import trainer_ckpt imported AllenNLP"
from allennlp.training import Checkpointer
print(Checkpointer.by_name("trainer_ckpt").__name__, Checkpointer.by_name("trainer_ckpt_group").__name__)
print(Checkpointer.by_name("default").__module__)
"""


def test_trainer_ckpt_imported_before_allennlp_registers_when_allennlp_is_imported():
    assert python(TRAINER_CKPT_FIRST) == ["DefaultCheckpointer CheckpointerGroup", "allennlp.training.checkpointer"]


ALLENNLP_FIRST = """
from allennlp.training import Checkpointer
import trainer_ckpt
print(Checkpointer.by_name("trainer_ckpt").__name__, Checkpointer.by_name("trainer_ckpt_group").__name__)
"""


def test_allennlp_imported_before_trainer_ckpt():
    assert python(ALLENNLP_FIRST) == ["DefaultCheckpointer CheckpointerGroup"]


SCRIPT_WITH_PARAMS = """
import sys
import trainer_ckpt
from allennlp.common import Params
from allennlp.training.checkpointer import Checkpointer  # the submodule: its package runs first
checkpointer = Checkpointer.from_params(Params({
    "type": "trainer_ckpt", "save_policy": {"type": "every_num_batches", "num_batches": 5},
    "retention_policy": "all"}), serialization_dir=sys.argv[1])
print(type(checkpointer).__name__, type(checkpointer._save_policy).__name__, checkpointer.retention_policy.describe())
"""


def test_a_script_builds_the_checkpointer_from_params_after_import_trainer_ckpt(tmp_path):
    assert python(SCRIPT_WITH_PARAMS, str(tmp_path)) == ["DefaultCheckpointer SaveEveryNumBatches all"]


HOOK_LEAVES_NO_TRACE = """
import sys
import trainer_ckpt
from trainer_ckpt.faces import registration as _allennlp_hook
hooks = lambda: [f for f in sys.meta_path if getattr(f, "trainer_ckpt_hook", False)]
assert len(hooks()) == 1
del sys.modules["trainer_ckpt"]
import trainer_ckpt  # a second import of the package (a plugin loader reloading it): still one hook
assert len(hooks()) == 1
import allennlp.training
assert len(hooks()) == 1 and hooks()[0].pending == {"allennlp.commands"}
from allennlp.commands.subcommand import Subcommand
import allennlp.commands
assert hooks() == [], "the hook stays after both modules were seen"
assert "checkpoints" in Subcommand.list_available()
for name in ("allennlp.training", "allennlp.commands"):  # their loaders are AllenNLP's own again
    module = sys.modules[name]
    assert type(module.__loader__).__name__ == "SourceFileLoader", module.__loader__
    assert module.__spec__.loader is module.__loader__
print("ok")
"""


def test_the_hook_registers_the_subcommand_too_and_then_goes_away():
    assert python(HOOK_LEAVES_NO_TRACE) == ["ok"]


A_FAILED_REGISTRATION = """
import sys, warnings
import trainer_ckpt
sys.modules["trainer_ckpt.faces.allennlp.group"] = None  # its import fails
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from allennlp.training import Checkpointer  # still imports
for w in caught:
    if str(w.message).startswith("trainer_ckpt"):
        print(w.message)
"""


def test_a_failed_registration_warns_and_leaves_allennlp_importable():
    [line] = python(A_FAILED_REGISTRATION)
    assert line == (
        "trainer_ckpt: registering with allennlp.training failed, got ModuleNotFoundError: import of trainer_ckpt.faces.allennlp.group "
        "halted; None in sys.modules. AllenNLP works, without trainer_ckpt's names; import trainer_ckpt.faces.allennlp "
        "to see the whole error."
    )


WITHOUT_ALLENNLP = """
import os, sys
sys.modules["allennlp"] = None  # as if AllenNLP were not installed: `import allennlp` raises ImportError
import torch
import trainer_ckpt
from trainer_ckpt import ConfigurationError, KeepMostRecentByCount, RetentionPolicy, SaveEveryNumBatches, SavePolicy
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

periodic = PeriodicCheckpointer(Checkpointer(torch.nn.Linear(2, 2), sys.argv[1]), 10, max_to_keep=2)
for iteration in range(50):
    periodic.step(iteration)
print(sorted(p for p in os.listdir(sys.argv[1]) if p.endswith(".pth")))

save = SaveEveryNumBatches(5, restart_each_epoch=False)
keep = RetentionPolicy.from_params({"type": "any", "policies": [KeepMostRecentByCount(2), {"type": "every_num_epochs", "num_epochs": 2}]})
print(type(save).__name__, keep.describe(), SavePolicy.by_name("completed_epochs").__name__)
try:
    KeepMostRecentByCount(0)
except ConfigurationError as e:
    print(type(e).__module__, isinstance(e, ValueError), e)
assert not [m for m, v in sys.modules.items() if m.split(".")[0] == "allennlp" and v is not None]
"""


def test_the_policies_and_the_fvcore_face_work_without_allennlp(tmp_path):
    lines = python(WITHOUT_ALLENNLP, str(tmp_path))
    assert lines[0] == "['model_0000039.pth', 'model_0000049.pth']"
    assert lines[1] == "SaveEveryNumBatches any(most_recent_by_count(2), every_num_epochs(2)) SaveCompletedEpochs"
    assert lines[2].startswith("trainer_ckpt True most_recent_by_count: `count` must be an integer >= 1, got 0. ")


# ---- the policies' registry, in this process --------------------------------------------------


@pytest.fixture
def restore_policy_registry():
    before = {base: dict(names) for base, names in CheckedRegistrable._registry.items()}
    yield
    CheckedRegistrable._registry.clear()
    CheckedRegistrable._registry.update(before)


class _Params:
    """Anything with `as_dict`, as AllenNLP's `Params` has."""

    def __init__(self, block):
        self.block = block

    def as_dict(self, quiet=False):
        return dict(self.block)


def test_the_registry_api(restore_policy_registry):
    @SavePolicy.register("every_third_epoch")
    class EveryThirdEpoch(SavePolicy):
        def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
            return current.end_of_epoch and current.epochs_completed % 3 == 0

    assert SavePolicy.is_registered("every_third_epoch") and not RetentionPolicy.is_registered("every_third_epoch")
    assert SavePolicy.list_available()[-1] == "every_third_epoch"
    assert SavePolicy.list_available()[0] == "completed_epochs"  # registration order
    assert SavePolicy.by_name("every_third_epoch") is EveryThirdEpoch
    assert SavePolicy.resolve_class_name("every_third_epoch") == (EveryThirdEpoch, None)
    assert SavePolicy.resolve_class_name("trainer_ckpt.SaveEveryNumBatches") == (SaveEveryNumBatches, None)
    assert SavePolicy.name_of(SaveEveryNumBatches) == "every_num_batches"
    assert RetentionPolicy.name_of(KeepMostRecentByCount) == "most_recent_by_count"
    for config in ("every_third_epoch", {"type": "every_third_epoch"}, _Params({"type": "every_third_epoch"})):
        assert type(SavePolicy.from_params(config)) is EveryThirdEpoch
    block = {"type": "every_num_batches", "num_batches": 3}
    assert SavePolicy.from_params(block).num_batches == 3 and block == {"type": "every_num_batches", "num_batches": 3}
    assert SaveEveryNumBatches.from_params({"num_batches": 4}).num_batches == 4  # a concrete class: no type needed
    assert type(SavePolicy.build("where", "key", "completed_epochs")) is SaveCompletedEpochs


def test_registry_mistakes_are_configuration_errors_in_our_format(restore_policy_registry):
    with pytest.raises(ConfigurationError, match=(
        r"^SavePolicy.register: the name 'completed_epochs' is taken by trainer_ckpt.save_policies.SaveCompletedEpochs, "
        r"got .*Mine\. Choose another name, or pass exist_ok=True to replace it\.$"
    )):
        @SavePolicy.register("completed_epochs")
        class Mine(SavePolicy):
            pass

    with pytest.raises(ConfigurationError, match=r"^SavePolicy.register\('x'\): only subclasses of SavePolicy can be registered, got "):
        SavePolicy.register("x")(KeepAll)
    with pytest.raises(ConfigurationError, match=(
        r"^save policy: `type` 'no_such_package.Policy' is not registered, and as a fully qualified class name its "
        r"module cannot be imported, got ModuleNotFoundError: No module named 'no_such_package'\. "
    )):
        SavePolicy.from_params({"type": "no_such_package.Policy"})
    with pytest.raises(ConfigurationError, match=(
        r"^retention policy: `type` 'trainer_ckpt.SaveNever' must name a subclass of RetentionPolicy, got "
        r"<class 'trainer_ckpt.save_policies.SaveNever'>\. Check the class name in trainer_ckpt\.$"
    )):
        RetentionPolicy.from_params("trainer_ckpt.SaveNever")
    with pytest.raises(ConfigurationError, match=r"^save policy: `type` must name a registered save policy, got 'nope'\. Use one of completed_epochs, "):
        SavePolicy.by_name("nope")


def test_a_registered_name_run_twice_replaces_itself(restore_policy_registry):
    classes = []
    for _ in range(2):  # a notebook cell run twice: the same qualified name
        @RetentionPolicy.register("latest_only")
        class LatestOnly(RetentionPolicy):
            def should_keep(self, checkpoints, now):
                return [i == len(checkpoints) - 1 for i in range(len(checkpoints))]
        classes.append(LatestOnly)
    assert RetentionPolicy.by_name("latest_only") is classes[1]
    assert LatestOnly().describe() == "latest_only"


def test_a_user_policy_gets_nested_policies_built_and_extras_passed(restore_policy_registry):
    @RetentionPolicy.register("either")
    class Either(RetentionPolicy):
        def __init__(self, first: RetentionPolicy, rest: List[RetentionPolicy], fallback: Optional[RetentionPolicy] = None,
                     serialization_dir: str = "") -> None:
            self.first, self.rest, self.fallback, self.serialization_dir = first, rest, fallback, serialization_dir

    either = RetentionPolicy.from_params(
        {"type": "either", "first": "all", "rest": [{"type": "most_recent_by_count", "count": 2}]},
        serialization_dir="/runs/x", unrelated=1,
    )
    assert type(either.first) is KeepAll and [p.describe() for p in either.rest] == ["most_recent_by_count(2)"]
    assert either.fallback is None and either.serialization_dir == "/runs/x"
    with pytest.raises(ConfigurationError, match=(
        r"^either: `rest\[0\]` is not a valid retention policy, got \{'type': 'most_recent_by_count', 'count': 0\}\. "
        r"most_recent_by_count: `count` must be an integer >= 1, got 0\."
    )):
        RetentionPolicy.from_params({"type": "either", "first": "all", "rest": [{"type": "most_recent_by_count", "count": 0}]})


def test_inside_allennlp_our_error_is_also_allennlps():
    from allennlp.common.checks import ConfigurationError as AllenNlpConfigurationError

    with pytest.raises(AllenNlpConfigurationError) as caught:
        KeepMostRecentByCount(0)
    error = caught.value
    assert isinstance(error, ConfigurationError) and isinstance(error, ValueError)
    assert error.message == str(error) and str(error).startswith("most_recent_by_count: `count` must be an integer >= 1, got 0.")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
