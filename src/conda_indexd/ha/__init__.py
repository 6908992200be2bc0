"""One writer per channel: the folder lock, the bucket lease, the PostgreSQL pair's leadership."""
