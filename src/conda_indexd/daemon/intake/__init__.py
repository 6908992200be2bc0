"""How changes come in: watchdog on a channel folder, S3 events and polling for a bucket, pkgs dirs."""
