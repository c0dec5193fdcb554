// Save every 5 batches inside an epoch and at every epoch end; keep the 3 newest checkpoints.
// The same with AllenNLP's flat keys: {type: "trainer_ckpt", save_every_num_batches: 5,
// keep_most_recent_by_count: 3}.
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt",
      save_policy: {
        type: "any",
        policies: ["completed_epochs", { type: "every_num_batches", num_batches: 5 }],
      },
      retention_policy: { type: "most_recent_by_count", count: 3 },
    },
  },
}
