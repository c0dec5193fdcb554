// Two checkpointers in one run directory (ignite's and detectron2's `file_prefix`): a periodic one
// that --recover resumes from (every 5 batches, keep 2), and a "best" one that saves when the
// validation metric is the best so far and keeps the best 2, under the prefix "best_".
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt_group",
      checkpointers: [
        { save_every_num_batches: 5, keep_most_recent_by_count: 2 },
        {
          filename_prefix: "best_",
          save_policy: "best_so_far",
          retention_policy: { type: "best", metric: "+accuracy", count: 2 },
        },
      ],
    },
  },
}
