"""The mmengine face: `hook` (CheckpointHook) and `patches` (every patch of mmengine, in one place)."""
