"""`conda-indexd demo`: a small channel of real packages, and the deterministic package builder behind it."""
