"""Retention policies (0.1's import path): see `trainer_ckpt.policies.retention`."""
from trainer_ckpt.policies.retention import *  # noqa: F401,F403
