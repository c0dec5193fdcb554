"""
Bytes on disk, below the stores, each module using only those listed before it: `settings`
(torch's process-wide settings, changed under one lock), `fastio` (checksumming, direct I/O,
parallel verified reads), `durable` (temp file, fsync, rename; deletions), `checks` (the errors;
a file against its record), `sharded` (DCP state: every rank's part), `loading` (`read`: verify
against the record, then load with `weights_only=True`). Uses the standard library and torch only.
"""
