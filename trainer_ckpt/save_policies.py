"""Save policies (0.1's import path): see `trainer_ckpt.policies.save`."""
from trainer_ckpt.policies.save import *  # noqa: F401,F403
