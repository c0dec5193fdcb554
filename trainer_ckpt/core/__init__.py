"""
The engine and what it needs, framework-free: `engine` (save, commit, retain, clean up, find the
newest good checkpoint, load), `background` (snapshots and the writer thread), `lock` (one writer
per directory), `distributed` (the decisions ranks share), `rng` (every generator's state), `loaders` (torchdata's StatefulDataLoader, exactly).
Uses `io` and `stores` below it, and the policies' interface; never a training framework.
"""
