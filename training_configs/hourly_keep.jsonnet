// Long runs: save every 10 minutes and at epoch ends; keep the 3 newest, plus one checkpoint per
// hour permanently (each at least 3600 s after the previous one kept this way).
local base = import "base.libsonnet";
base + {
  trainer+: {
    checkpointer: {
      type: "trainer_ckpt",
      save_policy: {
        type: "any",
        policies: ["completed_epochs", { type: "every_num_seconds", seconds: 600 }],
      },
      retention_policy: {
        type: "any",
        policies: [
          { type: "most_recent_by_count", count: 3 },
          { type: "one_per_time_window", seconds: 3600 },
        ],
      },
    },
  },
}
