"""The published formats, pure: bytes in, bytes out, no store, cache or file system."""
