// Save every 5 batches and at epoch ends without blocking training: the state is copied to CPU
// memory and written by a worker thread (background: true); keep the 3 newest.
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt",
      background: true,
      save_every_num_batches: 5,
      keep_most_recent_by_count: 3,
    },
  },
}
