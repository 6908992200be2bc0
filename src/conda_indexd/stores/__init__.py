"""Channel stores: where packages live and where outputs are published (base: the seam; local, s3: the implementations; fenced: the pair's wrapper)."""
