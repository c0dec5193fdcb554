"""
The faces import their peers only when used: AllenNLP's `--include-package trainer_ckpt` imports
every submodule of the package, and must work where fvcore, ignite and mmengine are not installed.
"""
import subprocess
import sys

BLOCK_PEERS = """
import sys
for peer in ("fvcore", "ignite", "mmengine", "detectron2"):
    sys.modules[peer] = None  # `import peer` raises ImportError, as if it were not installed
from allennlp.common.util import import_module_and_submodules
import_module_and_submodules("trainer_ckpt")
import trainer_ckpt.fvcore, trainer_ckpt.ignite, trainer_ckpt.mmengine
assert not any(name.split(".")[0] in ("fvcore", "ignite", "mmengine") and sys.modules[name] is not None
               for name in sys.modules), "a peer was imported"
try:
    trainer_ckpt.ignite.Checkpoint
except ImportError as e:
    print("used without its peer:", e)
"""


def test_include_package_needs_no_peer_and_a_face_imports_its_peer_when_used():
    result = subprocess.run([sys.executable, "-c", BLOCK_PEERS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "used without its peer: No module named 'ignite.distributed'" in result.stdout


def test_the_faces_classes_carry_their_public_names():
    from trainer_ckpt.fvcore import Checkpointer
    from trainer_ckpt.ignite import Checkpoint, DiskSaver
    from trainer_ckpt.mmengine import CheckpointHook

    assert [c.__module__ for c in (Checkpointer, Checkpoint, DiskSaver, CheckpointHook)] == [
        "trainer_ckpt.fvcore", "trainer_ckpt.ignite", "trainer_ckpt.ignite", "trainer_ckpt.mmengine"]


MMENGINE_CUSTOM_IMPORTS = """
import mmengine
from mmengine.registry import HOOKS
from mmengine.utils import import_modules_from_strings
import_modules_from_strings(["trainer_ckpt.mmengine"])  # what a config's custom_imports does
print(HOOKS.get("TrainerCkptCheckpointHook").__module__)
"""


def test_custom_imports_registers_the_mmengine_hook():
    result = subprocess.run([sys.executable, "-c", MMENGINE_CUSTOM_IMPORTS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "trainer_ckpt.mmengine"
