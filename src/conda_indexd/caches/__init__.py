"""Caches of what was extracted from each package (base: the seam; sqlite: conda-index's cache.db; pg: its PostgreSQL cache)."""
