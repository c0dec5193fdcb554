"""
A Lightning run for the SIGKILL tests (tests/test_lightning_face.py): dropout, a shuffled
`trainer_ckpt.data.ResumableLoader` (a stateful loader: Lightning saves and restores its position),
a checkpoint every 3 steps; `killed` dies of a real SIGKILL in step 10 (the second epoch's third
batch), `resumed` goes on with fit(ckpt_path="last"). Writes the final weights and the global step
of its first batch beside the checkpoint directory.

    python tests/lightning_loop.py DIR {straight,killed,resumed} {ours,lightning}
"""
import os
import signal
import sys

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from trainer_ckpt.data import ResumableLoader
from trainer_ckpt.lightning import ModelCheckpoint

directory, mode, face = sys.argv[1:4]
KILL_AT = 10


class Model(BoringModel):
    def __init__(self):
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)
        self.first_step = None

    def forward(self, x):
        return self.layer(self.dropout(x))

    def train_dataloader(self):
        data = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
        return ResumableLoader(list(data), batch_size=4, shuffle=True, seed=3)

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = self.trainer.global_step
        if mode == "killed" and self.trainer.global_step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().training_step(batch, batch_idx)


torch.manual_seed(0)
model = Model()
callback = (ModelCheckpoint if face == "ours" else LightningModelCheckpoint)(
    dirpath=directory, every_n_train_steps=3, save_top_k=-1, save_last=True)
trainer = Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
trainer.fit(model, ckpt_path="last" if mode == "resumed" else None)
torch.save({"weights": model.state_dict(), "first_step": model.first_step}, f"{directory}.{mode}.pt")
