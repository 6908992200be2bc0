"""The daemon's HTTP listener: the protocol (no I/O), the server and the status page."""
