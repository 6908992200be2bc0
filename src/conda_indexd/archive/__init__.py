"""Package archives (.conda, .tar.bz2): reading their metadata members and checksums, checking their path names."""
