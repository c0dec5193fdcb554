"""
The AllenNLP face: `checkpointer` (`DefaultCheckpointer`, registered as `"trainer_ckpt"`),
`group` (several checkpointers as one), `flat_keys` (AllenNLP's own checkpointer keys as
policies), `trainer` (exact resume under AllenNLP's trainer), `registration` (registers them with
AllenNLP whichever is imported first).
"""
