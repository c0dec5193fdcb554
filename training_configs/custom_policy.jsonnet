// Policies from your own package (fixtures/plugins/my_policies.py here):
// PYTHONPATH=fixtures/plugins allennlp train training_configs/custom_policy.jsonnet -s runs/custom \
//     --include-package trainer_ckpt --include-package my_policies
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt",
      save_policy: { type: "after_warmup", warmup_epochs: 1, num_batches: 5 },
      retention_policy: "epoch_ends_and_latest",
    },
  },
}
