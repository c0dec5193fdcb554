// Keep the 2 best checkpoints by validation accuracy and the 2 newest: save at epoch ends (where
// validation runs, so those checkpoints carry metrics) and every 5 batches (for --recover).
// `validation_metric: "+accuracy"` is set in base.libsonnet; the retention rule names its own metric.
local base = import "base.libsonnet";
base + {
  trainer+: {
    num_epochs: 5,
    checkpointer: {
      type: "trainer_ckpt",
      save_policy: {
        type: "any",
        policies: ["completed_epochs", { type: "every_num_batches", num_batches: 5 }],
      },
      retention_policy: {
        type: "any",
        policies: [
          { type: "best", metric: "+accuracy", count: 2 },
          { type: "most_recent_by_count", count: 2 },
        ],
      },
    },
  },
}
