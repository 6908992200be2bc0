"""`conda-indexd wait`: the CI hand-off, waiting until a package is published."""
