"""Small helpers every layer may use: POSIX writes (fsio) and logging (logs)."""
