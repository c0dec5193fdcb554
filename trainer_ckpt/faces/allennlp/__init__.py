"""
The AllenNLP face: `checkpointer` (`DefaultCheckpointer`, registered as `"trainer_ckpt"`),
`group` (several checkpointers as one, `"trainer_ckpt_group"`), `flat_keys` (AllenNLP's own
checkpointer keys as policies), `trainer` (exact resume under AllenNLP's trainer). Importing any of
it imports both registered classes, in this order (the group is built from checkpointers); what
imports it when AllenNLP is imported is `trainer_ckpt.faces.registration`.
"""
from trainer_ckpt.faces.allennlp import checkpointer, group  # noqa: F401 (their registration in AllenNLP)
