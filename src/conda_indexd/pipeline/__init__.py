"""The indexing stages of a subdir (fs state, extract, build, publish, shards) and the record memo."""
