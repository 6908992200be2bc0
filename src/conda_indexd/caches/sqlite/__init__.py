"""conda-index 0.13's per-subdir cache.db, its schema and our record pieces beside it."""
