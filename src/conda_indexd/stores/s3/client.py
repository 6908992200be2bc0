"""The boto3 S3 client of an `S3Store`: the standard AWS chain, path-style addressing
for any endpoint that is not AWS's own (Ceph RGW, MinIO) unless the profile sets
`s3.addressing_style`, and two savings of CPU per request, which is what a cold index of
a bucket spends most on (botocore costs a few ms of Python per request):
- timestamps (LastModified in a listing, Last-Modified in a HEAD or GET) parsed with
  `datetime.fromisoformat` / `email.utils` instead of dateutil's general parser: a
  1,000-key ListObjectsV2 page took 260-440 ms of CPU, about 100 ms with these;
- no client-side parameter validation (every call's parameters are this package's own);
- one data loader per process (botocore's service models, endpoint rules: its JSON files
  are parsed once, not once per client), and a forked worker inherits it already filled,
  so a client made in an extract process costs a few ms, not 0.3 s.
Checksums and retries stay botocore's (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE apply).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from conda_indexd.stores.base import StoreError


POOL_CONNECTIONS = 32  # connections a client keeps: at least the requests a process has in flight

_loaders: dict[str | None, Any] = {}  # AWS_DATA_PATH -> botocore's data loader, kept for the process
_loaders_lock = threading.Lock()


def make_client() -> Any:
    """A boto3 S3 client from the standard AWS chain (thread-safe: one per process is
    enough, shared by its threads)."""
    try:
        import boto3
        import botocore.loaders
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise StoreError("s3:// channels need boto3: pip install 'conda-indexd[s3]'") from None
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):  # their INFO lines are not ours to log
        logging.getLogger(name).setLevel(logging.WARNING)
    core = botocore.session.get_session()
    data_path = core.get_config_variable("data_path")
    with _loaders_lock:
        if data_path not in _loaders:
            _loaders[data_path] = botocore.loaders.create_loader(data_path)
    core.register_component("data_loader", _loaders[data_path])
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    session = boto3.session.Session(botocore_session=core)
    s3_settings = core.get_scoped_config().get("s3", {})  # the profile's [s3] section
    style = s3_settings.get("addressing_style") if isinstance(s3_settings, dict) else None
    base = {"connect_timeout": 5, "read_timeout": 60, "retries": {"mode": "standard"}, "max_pool_connections": POOL_CONNECTIONS,
            "parameter_validation": False}  # fmt: skip
    client = session.client("s3", config=Config(**base, s3={"addressing_style": style or "auto"}))
    if style is None and "amazonaws.com" not in (client.meta.endpoint_url or ""):
        client = session.client("s3", config=Config(**base, s3={"addressing_style": "path"}))
    return client


def parse_timestamp(value: Any) -> datetime:
    """S3's two timestamp forms the quick way (ISO 8601 in XML bodies, RFC 1123 in
    headers), anything else botocore's way. Always timezone-aware, as botocore's."""
    if isinstance(value, str):
        try:
            if value.endswith("Z") and "T" in value:
                return datetime.fromisoformat(value)
            if value.endswith(" GMT"):
                return parsedate_to_datetime(value)
        except (ValueError, TypeError, IndexError):
            pass
    from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

    return DEFAULT_TIMESTAMP_PARSER(value)  # type: ignore[no-any-return]
