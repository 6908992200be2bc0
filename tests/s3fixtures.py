"""Session-wide Ceph RGW for the S3 tests, and a fresh bucket per test.

`rgw` starts one throwaway cluster (tests/rgwserver.py) for the whole session, or skips
with the reason when the Ceph daemons are not installed (`.ci/run` installs radosgw,
ceph-mon and ceph-osd) or the cluster cannot start here.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rgwserver import RgwCluster, RgwError, missing_tools

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def rgw() -> Iterator[RgwCluster]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"Ceph RGW not installed (missing {', '.join(missing)}; apt-get install radosgw ceph-mon ceph-osd, .ci/run installs them)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("boto3 not installed (pip install 'conda-indexd[s3]')")
    base = Path(tempfile.mkdtemp(prefix="conda-indexd-rgw-"))
    cluster = RgwCluster(base)
    try:
        cluster.start()
    except (RgwError, OSError) as exc:
        pytest.skip(f"Ceph RGW could not start here: {exc}")
    saved = {k: os.environ.get(k) for k in cluster.env()}
    os.environ.update(cluster.env())  # the in-process stores use the standard AWS variables too
    try:
        yield cluster
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cluster.stop()


def admin_client(cluster: RgwCluster, service: str = "s3") -> Any:
    import boto3
    from botocore.config import Config

    env = cluster.env()
    return boto3.client(
        service,
        endpoint_url=cluster.endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


@pytest.fixture
def s3(rgw: RgwCluster) -> Any:
    """A boto3 client on the session's RGW (the uploader's side in tests)."""
    return admin_client(rgw)


@pytest.fixture
def bucket(rgw: RgwCluster, s3: Any) -> Iterator[str]:
    """A new, empty bucket; emptied and deleted after the test (one DELETE at a time when
    it notifies: Ceph 16's radosgw aborts when a batch delete sends notifications)."""
    if not rgw.endpoint_up():  # a test stopped it, or it died: the next one gets it back
        rgw.stop_rgw()
        rgw.start_rgw()
    name = f"t{os.getpid()}-{next(_bucket_numbers)}"
    s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        if rgw.endpoint_up():
            notifies = bool(s3.get_bucket_notification_configuration(Bucket=name).get("TopicConfigurations"))
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
                if keys and not notifies:
                    s3.delete_objects(Bucket=name, Delete={"Objects": keys})
                for key in keys if notifies else ():
                    s3.delete_object(Bucket=name, Key=key["Key"])
            s3.delete_bucket(Bucket=name)
