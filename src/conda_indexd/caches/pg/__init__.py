"""conda-index 0.13's PostgreSQL cache and its schema (the postgresql extra)."""
