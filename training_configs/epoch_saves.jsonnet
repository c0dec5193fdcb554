// Save at the end of every epoch and keep the two newest: AllenNLP's defaults, written out.
// allennlp train training_configs/epoch_saves.jsonnet -s runs/epochs --include-package trainer_ckpt
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt",
      save_policy: "completed_epochs",
      retention_policy: { type: "most_recent_by_count", count: 2 },
    },
  },
}
