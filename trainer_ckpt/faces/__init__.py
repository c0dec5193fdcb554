"""
The faces: each translates one framework's calls, objects, file names and errors into the
engine's, and back. `allennlp` (the registrable checkpointer, the group, AllenNLP's flat keys,
the trainer hooks for exact resume, the registration), `_fvcore` (with its resumable loader),
`_ignite`, `_mmengine` (with its patches of mmengine in one module), `_lightning` (the callback
and the CheckpointIO plugin). The peer faces have private
names because AllenNLP's `--include-package trainer_ckpt` imports every public submodule, and
these import their peer: they are used through `trainer_ckpt.fvcore`, `.ignite`, `.mmengine` and `.lightning`,
which import them on first use. Framework internals are read only here.
"""
