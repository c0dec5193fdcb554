"""
One rank of a 2-process gloo group on the CPU with a real FSDP2 (`fully_shard`) model and Adam:
`python tests/fsdp_rank.py SCENARIO RANK DIR STORE`. Run by tests/test_sharded.py.
`FSDP_BACKGROUND=1` builds every face's checkpointer with `background=True`.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests._resume import note_start  # noqa: E402

scenario, rank, directory, store = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
BACKGROUND = os.environ.get("FSDP_BACKGROUND") == "1"


def build(width=16):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def step(model, optimizer, i, width=16):
    data = torch.Generator().manual_seed(100 * i + rank)  # each rank its own batch
    model(torch.randn(8, width, generator=data)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def full(model):
    return {k: v.full_tensor() for k, v in model.state_dict().items()}


def same(a, b):
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    for k in a:
        assert torch.equal(a[k], b[k]), k


def reference_states(n):
    """The full state after each of `n` steps of an uninterrupted run."""
    model, optimizer = build()
    states = {}
    for i in range(n):
        step(model, optimizer, i)
        states[i] = full(model)
    return states


def resumes_at_3(make_checkpointer, states):
    """A new model, optimizer and checkpointer resume from iteration 3, then train on bit-identically."""
    model, optimizer = build()
    checkpointer = make_checkpointer(model, optimizer)
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 3
    same(full(model), states[3])
    step(model, optimizer, 4)
    same(full(model), states[4])


def fvcore():
    from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

    states = reference_states(6)
    if rank == 0:
        torch.save(states, os.path.join(directory, "reference.pt"))

    # Interrupted after iteration 3: saves at 1 and 3 (every rank calls save: the state is sharded).
    model, optimizer = build()
    checkpointer = Checkpointer(model, directory, save_to_disk=rank == 0, optimizer=optimizer, background=BACKGROUND)
    periodic = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=2)
    for i in range(4):
        step(model, optimizer, i)
        periodic.step(i)
    checkpointer.wait()  # a background save of iteration 3 is committed before this process reads the directory again
    del model, optimizer, checkpointer

    # Resumed: a new model, optimizer and checkpointer load their shards, and train on bit-identically.
    model, optimizer = build()
    checkpointer = Checkpointer(model, directory, save_to_disk=rank == 0, optimizer=optimizer, background=BACKGROUND)
    start = checkpointer.resume_or_load("", resume=True)["iteration"] + 1
    assert start == 4, start
    same(full(model), states[3])
    periodic = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=2)
    for i in range(start, 6):
        step(model, optimizer, i)
        periodic.step(i)
    same(full(model), states[5])
    checkpointer.wait()
    dist.barrier()
    if rank == 0:
        names = sorted(os.listdir(directory))
        assert [n for n in names if n.endswith(".pth")] == ["model_0000003.pth", "model_0000005.pth"], names
        assert sorted(os.listdir(os.path.join(directory, "model_0000005.pth"))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        # A shard changes on disk (bit rot, a torn copy): resuming falls back to model_0000003.
        shard = os.path.join(directory, "model_0000005.pth", "__1_0.distcp")
        with open(shard, "r+b") as f:
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 0xFF]))
    dist.barrier()
    resumes_at_3(lambda m, o: Checkpointer(m, directory, save_to_disk=rank == 0, optimizer=o), states)
    print(f"rank {rank}: fvcore ok", flush=True)


def bucket():
    """fvcore's face saving sharded state to an S3 bucket (argv: URL, storage options as JSON); a new machine resumes."""
    import json

    from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

    url, options = sys.argv[5], json.loads(sys.argv[6])
    states = reference_states(5)
    model, optimizer = build()
    checkpointer = Checkpointer(model, url, save_to_disk=rank == 0, optimizer=optimizer, storage_options=options,
                                staging_dir=os.path.join(directory, "machine_a"))
    periodic = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=1)
    for i in range(4):
        step(model, optimizer, i)
        periodic.step(i)
    dist.barrier()
    # A new machine: an empty staging directory, filled from the bucket.
    resumes_at_3(lambda m, o: Checkpointer(m, url, save_to_disk=rank == 0, optimizer=o, storage_options=options,
                                           staging_dir=os.path.join(directory, "machine_b")), states)
    print(f"rank {rank}: bucket ok", flush=True)


def loop():
    """Resumes, then saves back to back until killed: every parameter holds the iteration it was saved at."""
    from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer

    model, optimizer = build(width=4096)  # 4096 x 32 floats and Adam's moments, sharded: 0.75 MiB per rank
    checkpointer = Checkpointer(model, directory, save_to_disk=rank == 0, optimizer=optimizer, background=BACKGROUND)
    i = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1
    if i:
        assert all(torch.equal(p.full_tensor(), torch.full_like(p.full_tensor(), float(i - 1))) for p in model.parameters())
    note_start(directory, i, rank=rank)  # the test checks that each start went on from the newest checkpoint
    periodic = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=3)
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))
        periodic.step(i)
        i += 1


def ignite():
    from ignite.engine import Engine, Events

    from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint

    def trainer_of(model, optimizer):
        return Engine(lambda engine, batch: step(model, optimizer, engine.state.iteration))

    reference, optimizer = build()
    trainer_of(reference, optimizer).run(range(6), max_epochs=1)
    expected = full(reference)

    # Every rank calls the handler (ignite's rule); with sharded state every rank writes its shard.
    model, optimizer = build()
    trainer = trainer_of(model, optimizer)
    checkpoint = Checkpoint({"model": model, "optimizer": optimizer, "trainer": trainer},
                            DiskSaver(directory, require_empty=False, background=BACKGROUND), n_saved=2)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=1), checkpoint)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda e: e.terminate())
    trainer.run(range(6), max_epochs=1)
    checkpoint.save_handler.wait()  # a background save of iteration 4 is committed
    dist.barrier()
    path = latest_checkpoint(directory)
    assert os.path.basename(path) == "checkpoint_4.pt", path
    if rank == 0:
        assert sorted(n for n in os.listdir(directory) if not n.startswith(".")) == ["checkpoint_3.pt", "checkpoint_4.pt"]
        assert os.path.isdir(path)

    model, optimizer = build()
    trainer = trainer_of(model, optimizer)
    Checkpoint.load_objects({"model": model, "optimizer": optimizer, "trainer": trainer}, path)
    assert trainer.state.iteration == 4, trainer.state.iteration
    trainer.run(range(6), max_epochs=1)
    same(full(model), expected)
    print(f"rank {rank}: ignite ok", flush=True)


def allennlp():
    from allennlp.training.trainer import TrainerCheckpoint

    from trainer_ckpt import DefaultCheckpointer

    class Trainer:
        """What the checkpointer reads of AllenNLP's trainer: its state, model and optimizer."""

        def __init__(self, model, optimizer):
            self.model, self.optimizer, self.e, self.b = model, optimizer, 0, 0

        def restore(self):  # as AllenNLP's trainer restores: from its own method
            return self._checkpointer.load_checkpoint()

        def get_checkpoint_state(self):
            return TrainerCheckpoint(self.model.state_dict(), {
                "optimizer": self.optimizer.state_dict(), "epochs_completed": self.e, "batches_in_epoch_completed": self.b,
            })

    reference, optimizer = build()
    states = {}
    for i in range(4):
        step(reference, optimizer, i)
        states[i] = full(reference)
    model, optimizer = build()
    trainer = Trainer(model, optimizer)
    checkpointer = DefaultCheckpointer(directory, save_every_num_batches=2, keep_most_recent_by_count=None, background=BACKGROUND)
    checkpointer.state_is_sharded = True  # what AllenNLP's trainer sets for a sharded model
    trainer._checkpointer = checkpointer
    for i in range(3):
        step(model, optimizer, i)
        trainer.b = i + 1
        checkpointer.maybe_save_checkpoint(trainer, 0, i + 1)
    checkpointer.close()
    dist.barrier()
    if rank == 0:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        assert names == ["checkpoint_e0_b2.json", "model_state_e0_b2.th", "training_state_e0_b2.th"], names
        assert os.path.isdir(os.path.join(directory, "model_state_e0_b2.th"))
    model, optimizer = build()
    trainer = Trainer(model, optimizer)
    checkpointer = DefaultCheckpointer(directory)
    checkpointer.state_is_sharded = True
    trainer._checkpointer = checkpointer
    model_state, training_state = trainer.restore()
    model.load_state_dict(model_state)
    optimizer.load_state_dict(training_state["optimizer"])
    assert training_state["batches_in_epoch_completed"] == 2
    same(full(model), states[1])
    step(model, optimizer, 2)
    step(model, optimizer, 3)
    same(full(model), states[3])
    print(f"rank {rank}: allennlp ok", flush=True)


def mmengine():
    import uuid

    from mmengine.runner import Runner

    from scripts.mmengine_run import ToyData, _classes, start_probe
    from trainer_ckpt.mmengine import CheckpointHook

    ToyModel, _ = _classes()
    # mmengine's Runner broadcasts every parameter after `init_weights`, which DTensors do not
    # support (mmengine runs FSDP through its FlexibleRunner): here the model comes initialized.
    Runner._init_model_weights = lambda self: None

    def runner(work_dir, max_epochs, resume=False):
        torch.manual_seed(0)
        model = ToyModel()
        for layer in (model.net[0], model.net[3]):
            fully_shard(layer)
        fully_shard(model.net)
        loader = dict(dataset=ToyData(), sampler=dict(type="DefaultSampler", shuffle=True), batch_size=8, num_workers=0)
        return Runner(
            model=model, work_dir=work_dir, train_dataloader=loader,
            optim_wrapper=dict(optimizer=dict(type="Adam", lr=0.01)),
            param_scheduler=dict(type="MultiStepLR", milestones=[2], end=3),  # the same schedule in every run
            train_cfg=dict(by_epoch=True, max_epochs=max_epochs), default_hooks=dict(checkpoint=dict(type=CheckpointHook, interval=1, background=BACKGROUND)),
            randomness=dict(seed=0), resume=resume, default_scope=None, log_level="WARNING",
            experiment_name=f"fsdp-{uuid.uuid4().hex[:12]}", custom_hooks=[dict(type=start_probe())],
        )  # the probe notes where each Runner starts training (tests/_resume.py): the test checks the resume

    reference = runner(os.path.join(directory, "reference"), 3)
    reference.train()
    expected = {k: v.full_tensor() for k, v in reference.model.net.state_dict().items()}
    runner(os.path.join(directory, "run"), 2).train()
    dist.barrier()
    if rank == 0:
        names = sorted(n for n in os.listdir(os.path.join(directory, "run")) if n.endswith(".pth"))
        assert names == ["epoch_1.pth", "epoch_2.pth"], names
        assert os.path.isdir(os.path.join(directory, "run", "epoch_2.pth"))
    resumed = runner(os.path.join(directory, "run"), 3, resume=True)
    resumed.train()
    assert resumed.iter == reference.iter == 12, (resumed.iter, reference.iter)
    same({k: v.full_tensor() for k, v in resumed.model.net.state_dict().items()}, expected)
    print(f"rank {rank}: mmengine ok", flush=True)


def failing():
    """Rank 1's disk fails during a sharded save: the save fails on both ranks; the earlier checkpoint stays the newest."""
    import errno

    import torch.distributed.checkpoint as dcp

    from trainer_ckpt.core.engine import CheckpointSaveError
    from trainer_ckpt.fvcore import Checkpointer

    model, optimizer = build()
    checkpointer = Checkpointer(model, directory, save_to_disk=rank == 0, optimizer=optimizer, background=BACKGROUND)
    step(model, optimizer, 0)
    checkpointer.save("model_0000000", iteration=0)
    checkpointer.wait()
    saved = full(model)
    if rank == 1:
        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        dcp.FileSystemWriter.write_data = no_space
    step(model, optimizer, 1)
    try:
        checkpointer.save("model_0000001", iteration=1)
        checkpointer.wait()  # a background save's failure surfaces here
    except CheckpointSaveError as e:
        print(f"rank {rank}: the save failed: {e}", flush=True)
    else:
        raise AssertionError("the save did not fail")
    dist.barrier()
    assert not any(n.startswith(".model_0000001") or n == "model_0000001.pth" for n in os.listdir(directory)), os.listdir(directory)
    model, optimizer = build()
    checkpointer = Checkpointer(model, directory, save_to_disk=rank == 0, optimizer=optimizer)
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 0
    same(full(model), saved)
    print(f"rank {rank}: failing ok", flush=True)


globals()[scenario]()
dist.barrier()
dist.destroy_process_group()
