"""
Bytes on disk, below the stores: `durable` (temp file, fsync, rename; deletions), `fastio`
(checksumming, direct I/O, parallel verified reads), `loading` (verify against a record, then load
with `weights_only=True`), `settings` (torch's process-wide settings, changed under one lock),
`sharded` (DCP state: every rank's part). Uses the standard library and torch only.
"""
