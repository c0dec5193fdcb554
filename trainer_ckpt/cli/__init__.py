"""
The command line, `python -m trainer_ckpt` (and `allennlp checkpoints`): ls, verify, prune,
export, diff over any face's directory or a bucket. Uses the engine, the stores and the policies.
"""
from trainer_ckpt.cli.commands import main

__all__ = ["main"]
