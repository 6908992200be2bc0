"""conda package caches (pkgs dirs) served as a channel: which packages they hold, placed into the channel."""
