"""
The package as a user gets it: the sdist and the wheel built from it, the wheel's metadata, and
`pip install trainer-ckpt[ignite,fvcore]` into a fresh environment without AllenNLP, where each
face saves, keeps what one of our retention policies says, resumes at the step it stopped, and
the `trainer-ckpt` command reads what they wrote. Also: the source stays within the Python it
declares, and an older torch than declared gets a clear error.
"""
import ast
import glob
import os
import subprocess
import sys
import zipfile

from tests.conftest import ROOT

TORCH_ONLY = os.path.join(ROOT, ".venv", "torch-only")  # torch and its dependencies alone: scripts/setup_env.sh
EXTRAS = {"fvcore", "ignite", "mmengine", "lightning", "s3", "safetensors", "fast", "data", "all"}


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


SMOKE = r'''
import importlib.util, os, sys
import torch

assert importlib.util.find_spec("allennlp") is None, "AllenNLP is installed in the clean environment"
import trainer_ckpt
assert trainer_ckpt.__file__.startswith(sys.prefix), trainer_ckpt.__file__  # the installed wheel, not the checkout
from trainer_ckpt import KeepMostRecentByCount

out = sys.argv[1]

# ignite: a Checkpoint every 5 iterations, the two newest kept; resumed from iteration 15.
from ignite.engine import Engine, Events
from trainer_ckpt.ignite import Checkpoint, DiskSaver

def ignite_run(resume_from=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    def step(engine, batch):
        optimizer.zero_grad()
        loss = model(torch.randn(3, 4)).pow(2).mean()  # random data: exact only if the RNG resumes too
        loss.backward()
        optimizer.step()
    trainer = Engine(step)
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
    if resume_from is None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5), Checkpoint(
            to_save, DiskSaver(os.path.join(out, "ignite")), retention_policy=KeepMostRecentByCount(2)))
    else:
        Checkpoint.load_objects(to_save, checkpoint=resume_from)
    first = []
    trainer.add_event_handler(Events.ITERATION_STARTED(once=trainer.state.iteration + 1), lambda e: first.append(e.state.iteration))
    trainer.run(range(10), max_epochs=2)
    return model, first[0]

model, started = ignite_run()
kept = sorted(f for f in os.listdir(os.path.join(out, "ignite")) if f.endswith(".pt"))
print("ignite kept", kept, "started at", started)
resumed, started = ignite_run(os.path.join(out, "ignite", "checkpoint_15.pt"))
print("ignite resumed at", started)
assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))

# fvcore: PeriodicCheckpointer every 5 iterations, the two newest periodic ones kept; resume_or_load.
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
checkpointer = Checkpointer(model, os.path.join(out, "fvcore"), optimizer=optimizer)
periodic = PeriodicCheckpointer(checkpointer, 5, max_iter=20, retention_policy=KeepMostRecentByCount(2))
for iteration in range(20):
    optimizer.zero_grad()
    model(torch.randn(3, 4)).pow(2).mean().backward()
    optimizer.step()
    periodic.step(iteration)
print("fvcore kept", sorted(f for f in os.listdir(os.path.join(out, "fvcore")) if f.endswith(".pth")))
fresh = torch.nn.Linear(4, 2)
extra = Checkpointer(fresh, os.path.join(out, "fvcore")).resume_or_load("", resume=True)
print("fvcore resumed after iteration", extra["iteration"])
assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
'''


def test_the_wheel_installs_as_a_user_would_and_each_face_works_without_allennlp(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), ROOT])  # the sdist, then the wheel from it
    [sdist] = glob.glob(str(dist / "trainer_ckpt-0.2.0.tar.gz"))
    [wheel] = glob.glob(str(dist / "trainer_ckpt-0.2.0-py3-none-any.whl"))
    assert os.path.getsize(sdist) > 0

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read("trainer_ckpt-0.2.0.dist-info/METADATA").decode()
        entry_points = z.read("trainer_ckpt-0.2.0.dist-info/entry_points.txt").decode()
    fields = [line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line]
    assert ["Name", "trainer-ckpt"] in fields and ["Version", "0.2.0"] in fields
    assert ["Requires-Python", ">=3.9"] in fields
    requires = [value for key, value in fields if key == "Requires-Dist"]
    assert "torch>=2.6" in requires and "numpy>=1.22" in requires
    assert not [r for r in requires if "extra ==" not in r and r.split(">")[0] not in ("torch", "numpy")], requires
    assert {value for key, value in fields if key == "Provides-Extra"} == EXTRAS
    assert "trainer-ckpt = trainer_ckpt.cli:main" in entry_points
    assert "trainer_ckpt/py.typed" in names
    sources = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "trainer_ckpt", "**", "*.py"), recursive=True)}
    assert sources <= names, sorted(sources - names)  # every module, none left behind by the sdist
    assert not [n for n in names if n.startswith(("tests/", "fixtures/", "scripts/"))]

    # A fresh environment; torch (the one heavy dependency, already downloaded) seen through a .pth.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    assert os.path.isdir(os.path.join(TORCH_ONLY, "torch")), f"{TORCH_ONLY} has no torch: run scripts/setup_env.sh"
    with open(os.path.join(site, "torch_only.pth"), "w") as f:
        f.write(TORCH_ONLY + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
         f"{wheel}[ignite,fvcore]"], env=env, cwd=str(tmp_path))

    out = tmp_path / "runs"
    lines = run([python, "-c", SMOKE, str(out)], env=env, cwd=str(tmp_path)).splitlines()
    assert lines == [
        "ignite kept ['checkpoint_15.pt', 'checkpoint_20.pt'] started at 1",
        "ignite resumed at 16",
        "fvcore kept ['model_0000014.pth', 'model_0000019.pth', 'model_final.pth']",  # 4 and 9 deleted
        "fvcore resumed after iteration 19",
    ], lines

    command = str(venv / "bin" / "trainer-ckpt")
    assert run([command, "--help"], env=env, cwd=str(tmp_path)).startswith("usage: trainer-ckpt ")
    verified = run([command, "verify", str(out / "ignite")], env=env, cwd=str(tmp_path))
    assert "checkpoint_20.pt" in verified, verified
    listed = run([command, "ls", str(out / "fvcore")], env=env, cwd=str(tmp_path))
    assert "model_final" in listed, listed


def test_the_source_stays_within_the_python_it_declares():
    """`Requires-Python >=3.9`: only 3.11 runs here, so the syntax is checked against 3.9's grammar."""
    for path in glob.glob(os.path.join(ROOT, "trainer_ckpt", "**", "*.py"), recursive=True):
        with open(path) as f:
            ast.parse(f.read(), path, feature_version=(3, 9))
    try:  # the check can fail: 3.10's match statement is refused
        ast.parse("match x:\n    case 1: pass\n", feature_version=(3, 9))
    except SyntaxError:
        pass
    else:
        raise AssertionError("feature_version=(3, 9) accepted a match statement")


def test_an_older_torch_gets_a_clear_error():
    code = "import torch; torch.__version__ = '2.5.1'; import trainer_ckpt.io.settings"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: trainer_ckpt: needs torch>=2.6 (its serialization settings and safe globals), got torch 2.5.1. "
        "Upgrade torch: pip install 'torch>=2.6'."
    )
