// AllenNLP 2.4's checkpointer keys still work: keep 2 checkpoints, plus one every 2 hours
// permanently, and save every 30 minutes inside epochs (as well as at every epoch end).
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt",
      num_serialized_models_to_keep: 2,
      keep_serialized_model_every_num_seconds: 7200,
      model_save_interval: 1800,
    },
  },
}
