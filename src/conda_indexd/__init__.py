"""conda-indexd: the live indexer for conda channels."""

__version__ = "0.1.0"
