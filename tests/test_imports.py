"""
The faces import their peers only when used: AllenNLP's `--include-package trainer_ckpt` imports
every submodule of the package, and must work where fvcore, ignite and mmengine are not installed.
"""
import os
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


WITHOUT_ALLENNLP = """
import sys
sys.modules["allennlp"] = None  # as if AllenNLP were not installed
import torch
from ignite.engine import Engine, Events
import trainer_ckpt
from trainer_ckpt.cli import commands as cli
from trainer_ckpt.ignite import Checkpoint, DiskSaver
trainer = Engine(lambda engine, batch: None)
trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint({"model": torch.nn.Linear(2, 2)}, DiskSaver(sys.argv[1]), n_saved=1))
trainer.run([0, 1], max_epochs=2)
sys.exit(cli.main(["verify", sys.argv[1]]))
"""

PLUGIN = """
import sys
import trainer_ckpt
assert not any(m.startswith("allennlp") for m in sys.modules), "import trainer_ckpt imported AllenNLP"
from allennlp.common.plugins import import_plugins
from allennlp.training.checkpointer import Checkpointer
import_plugins()  # imports all of AllenNLP, then the packages a .allennlp_plugins file names: trainer_ckpt alone
del sys.modules["trainer_ckpt"]
import trainer_ckpt
print(sorted(n for n in Checkpointer.list_available() if n.startswith("trainer_ckpt")))
"""


def test_the_ignite_face_and_the_cli_work_without_allennlp(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_ALLENNLP, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == f"all checkpoints in {tmp_path} are good"
    assert sorted(os.listdir(tmp_path)) == [".model_4.pt.json", ".model_4.pt.rng", ".trainer_ckpt.core.lock", "model_4.pt"]


def test_import_trainer_ckpt_inside_allennlp_registers_its_checkpointers():
    result = subprocess.run([sys.executable, "-c", PLUGIN], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "['trainer_ckpt', 'trainer_ckpt_group']"


FIRST_SAVE = """
import sys, tempfile, torch
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine
from trainer_ckpt.stores.named import FVCORE, MAIN, NamedFiles
engine = Engine(NamedFiles(tempfile.mkdtemp(), FVCORE))
engine.save("model_0000000", {MAIN: {"w": torch.ones(3)}}, CheckpointInfo(0, 0, time=0.0))
print("torch.distributed.tensor" in sys.modules)
"""


def test_a_first_save_of_plain_state_does_not_import_torchs_dtensor():
    # Importing torch.distributed.tensor took 1.7 s (and 50 MiB) of the first save: no DTensor
    # can exist before it is imported, so the check for sharded state does not import it.
    result = subprocess.run([sys.executable, "-c", FIRST_SAVE], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
