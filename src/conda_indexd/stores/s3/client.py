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

`make_reader` gives the client an obstore twin for the GETs of packages (see there).
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
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
    client.meta.conda_indexd_session = core  # make_reader's credentials: this client's own chain
    return client


def make_reader(client: Any, bucket: str) -> Any | None:
    """An obstore (Rust object_store) S3 store that GETs the packages of `bucket` for the
    extract stage: a GET costs it about 0.2 ms of CPU against botocore's 1.1-2.3 ms, and
    a cold index is mostly GETs. It is `client`'s twin: the same endpoint, region,
    credentials (the botocore session's own chain, through obstore's
    Boto3CredentialProvider), CA bundle, attempts (AWS_MAX_ATTEMPTS) and timeouts.
    None (botocore reads them) without obstore installed, or with virtual-hosted
    addressing on an endpoint that is not AWS's own."""
    try:
        import obstore.store
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    core = client.meta.conda_indexd_session
    endpoint = client.meta.endpoint_url or ""
    aws = "amazonaws.com" in endpoint
    if not aws and client.meta.config.s3.get("addressing_style") != "path":
        return None
    attempts = int(core.get_config_variable("max_attempts") or 3)
    options: dict[str, Any] = {"connect_timeout": "5s", "read_timeout": "60s", "timeout": "1h", "allow_http": endpoint.startswith("http://")}
    verify = getattr(getattr(client, "_endpoint", None), "http_session", None)
    verify = getattr(verify, "_verify", True)
    if verify is False:
        options["allow_invalid_certificates"] = True
    elif isinstance(verify, str) and os.path.isfile(verify):
        with open(verify, "rb") as f:
            options["root_certificate"] = f.read()
    where: dict[str, Any] = {"virtual_hosted_style_request": True} if aws else {"endpoint": endpoint, "virtual_hosted_style_request": False}
    return obstore.store.S3Store(bucket, region=client.meta.region_name, client_options=options,  # type: ignore[arg-type]
                                 retry_config={"max_retries": max(0, attempts - 1), "retry_timeout": timedelta(seconds=60)},
                                 credential_provider=Boto3CredentialProvider(core), **where)  # fmt: skip


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
