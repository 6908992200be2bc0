"""A channel under s3://BUCKET/PREFIX: the store, its boto3 client, the streamed upload and the object names and headers."""
