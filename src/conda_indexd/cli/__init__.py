"""The command line: `conda-indexd index|watch|wait|demo` (main.py), the conda-index
compatibility flags (cli/compat.py), s3:// addresses (cli/s3config.py) and the progress line."""

from conda_indexd.cli.main import main as main
