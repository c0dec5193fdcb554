"""Two real processes in a gloo process group on the CPU, sharded state, one directory."""
import subprocess
import sys

from tests.conftest import ROOT, listing, names
from trainer_ckpt import stores

RANK = """
import sys, torch, torch.distributed as dist
from allennlp.common.checks import ConfigurationError
from allennlp.training.trainer import TrainerCheckpoint

rank, run_dir, store = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt import stores

class Trainer:
    def __init__(self, e, b):
        self.e, self.b = e, b
    def get_checkpoint_state(self):
        return TrainerCheckpoint({"w": torch.full((2,), float(rank))},
                                 {"epochs_completed": self.e, "batches_in_epoch_completed": self.b, "rank": rank})

class RankClock:
    # Rank 1's clock runs three times as fast as rank 0's: alone, each would save at other batches.
    def __init__(self):
        self.now = 0.0
    def __call__(self):
        self.now += 1.0 + 2.0 * rank
        return self.now

timed = DefaultCheckpointer(run_dir + "_timed", save_every_num_seconds=4, keep_most_recent_by_count=None, clock=RankClock())
timed.state_is_sharded = True
print("timed saves", [b for b in range(1, 21) if timed.maybe_save_checkpoint(Trainer(0, b), 0, b)])
timed.close()

checkpointer = DefaultCheckpointer(run_dir, save_every_num_batches=5)
checkpointer.state_is_sharded = True  # what AllenNLP's trainer sets for a sharded model
assert (checkpointer._rank, checkpointer._world_size) == (rank, 2)
for e in range(2):
    for b in range(1, 11):
        checkpointer.maybe_save_checkpoint(Trainer(e, b), e, b)
    checkpointer.maybe_save_checkpoint(Trainer(e + 1, 0), e + 1, 0)
    dist.barrier()  # as the trainer does after its end-of-epoch save

fresh = DefaultCheckpointer(run_dir)
fresh.state_is_sharded = True
model_state, training_state = fresh.load_checkpoint()
assert training_state == {"epochs_completed": 2, "batches_in_epoch_completed": 0, "rank": rank}, training_state
assert torch.equal(model_state["w"], torch.full((2,), float(rank)))
dist.barrier()
dist.destroy_process_group()
"""


def test_two_gloo_ranks_save_and_restore_their_own_shards(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(r), str(run_dir), str(tmp_path / "store")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    # A time-based policy under DDP: rank 0's clock decides, so every rank saves at the same batches
    # and every checkpoint is complete (both ranks' shards).
    timed = [next(line for line in o.splitlines() if line.startswith("timed saves")) for o in outputs]
    assert timed[0] == timed[1] and timed[0] != "timed saves []", timed
    batches = eval(timed[0][len("timed saves "):])
    assert len(batches) >= 3
    complete = stores.CheckpointDir(str(run_dir) + "_timed", "").list(range(2)).complete
    assert [f.progress for f in complete] == [(0, b) for b in batches]
    layout = stores.CheckpointDir(str(run_dir))
    found = layout.list(range(2))
    assert found.incomplete == []
    # Keep 2: the two newest survive; one older may linger while the slower rank was still writing.
    kept = [f.progress for f in found.complete]
    assert kept[-2:] == [(1, 10), (2, 0)] and len(kept) <= 3
    assert listing(run_dir) == sorted(names(*kept, rank=0) + names(*kept, rank=1))
