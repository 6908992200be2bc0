"""`conda-indexd watch`: the supervisor, the worker, the debounced queue, the change intake and the HTTP listener."""
