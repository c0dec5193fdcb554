"""The fvcore/detectron2 face: `checkpointer` (Checkpointer, PeriodicCheckpointer)."""
