"""`S3Store`: a channel under `s3://BUCKET/PREFIX` in S3-compatible object storage (the
`ChannelStore` seam; needs the `s3` extra, boto3).

- Connection settings come from the standard AWS chain (AWS_ENDPOINT_URL, AWS_PROFILE,
  AWS_ACCESS_KEY_ID, ~/.aws/config, ...). Path-style addressing is used for any endpoint
  that is not AWS's own unless the profile sets `s3.addressing_style` (Ceph RGW, MinIO).
- `list_packages` is a paged ListObjectsV2 with `/` as delimiter; `list_subdir` (a full
  run's) one without, of every key under the subdir, in key ranges listed at once when
  it is longer than a page (`_list_all`). `FileState.identity` is the
  ETag, `mtime` LastModified in whole seconds (a listing has milliseconds, a HEAD only
  seconds: both must give the same row), `size` the object's size.
- `open_package` is one GET into a spooled temporary file: the archive reader's md5,
  sha256 and metadata all come from those bytes. The GET is obstore's (Rust
  object_store, stores/s3/client.py `make_reader`: the client's endpoint, credentials
  and attempts) when it is installed: a fifth of botocore's CPU per request, and a cold
  index is mostly these GETs; every other request is botocore's. Only in the extract
  worker processes (`fast_reads`): obstore's runtime does not survive a fork, and the
  process that forks them must never have started it. The extract stage reads
  `read_ahead` packages at a time per worker.
- `write` is one PUT, skipped when the object already holds the bytes (a HEAD: our own
  sha256 in the object's metadata, else the ETag as the MD5 of a single-part object).
  Content-addressed shards are PUT with `If-None-Match: *` (412: already there, same
  bytes by construction). Content-Type and Cache-Control follow
  deploy/nginx/conda-channel.conf (repodata and index: revalidate; shards and packages:
  immutable). A PUT is durable and atomic when it returns, so `sync` does nothing.
- `copy` is one server-side CopyObject with the destination's own headers and the
  source's sha256, skipped when the destination already holds the bytes (same size and
  sha256, or same ETag).
- `writer` (repodata.json and the other big outputs) spools to a temporary file and
  uploads a large object in parts (stores/s3/upload.py): memory stays flat at any size.
- `write(..., sync=False)` (the shards) only queues the PUT on a small thread pool;
  `sync(folder)` waits for every queued PUT under it and raises the first failure, so
  the shard index is never written before its shards are in the bucket.
- Transport and permission errors raise `StoreError` (one line), never OSError: a
  network fault must fail the run (and be retried), not mark a package unreadable.
- The bucket as its own fence: the writes that make a publish visible (a subdir's shard
  index, repodata.json and repodata.json.zst: `FENCED_NAMES`) are conditional on the ETag
  this process last wrote or read for that key (`If-Match`, unquoted as RGW wants it;
  `If-None-Match: *` when it knows the key is absent). A deposed writer's PUT then fails
  at the server with 412 instead of replacing the new writer's output, and raises
  `WriterFenced` (a StoreError and a `fence.Fenced`): the run fails and the writer steps
  back. With a writer lease (`lease_held`, set by ha/s3lease.py, or by backends.py from a
  pair's fence) a 412 while the lease is still ours is a change from outside (or from a
  previous leader of a pair): one warning, and the write is made against what is there now. Ceph RGW 16 ignores conditions on CopyObject and CompleteMultipartUpload:
  for those a HEAD just before is the check (the condition is still sent, for stores that
  honour it); see docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import IO, Any, Protocol

from conda_indexd.names import SHARD_FILE, SHARDS_DIR, is_package_name, is_sidecar_name
from conda_indexd.stores.base import FileState, Listing, StoreError, StreamWriter
from conda_indexd.stores.s3.client import make_client, make_reader
from conda_indexd.stores.s3.objects import IMMUTABLE as IMMUTABLE  # re-exported: tests compare with them
from conda_indexd.stores.s3.objects import REVALIDATE as REVALIDATE
from conda_indexd.stores.s3.objects import SHA256_META, fenced_key, holds, object_headers, parse_s3_url
from conda_indexd.stores.s3.objects import WriterFenced as WriterFenced  # re-exported: raised by this store
from conda_indexd.stores.s3.objects import condition as _condition
from conda_indexd.stores.s3.objects import etag as _etag
from conda_indexd.stores.s3.upload import MULTIPART_THRESHOLD, PART_SIZE, spooled
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

SPOOL_IN_MEMORY = 32 << 20  # packages up to this size are read into memory, bigger ones to a temp file
CHUNK = 1 << 20
STAT_THREADS = 8
LIST_THREADS = 8  # key ranges of one prefix listed at once (_list_all)
PAGE = 1000  # keys per ListObjectsV2 page (the most S3 gives)
# where a prefix never listed before is split (after its first page): package names by
# first letters, so that each range holds a similar share of a channel like conda-forge's
# (py*, r-* are big), and the shard folder by hex digit: a dozen ranges, not one per letter
GUESSED_SPLITS = ("b", "d", "g", "l", "n", "p", "py", "q", "r-", "s", "shards/", "shards/4", "shards/8", "shards/c", "t")
READ_AHEAD = 6  # GETs of packages in flight per extract worker (pipeline/extract.py)
WRITE_THREADS = 8  # PUTs in flight for writes queued with sync=False


class S3Stats(Protocol):
    """Where a store counts its requests (the daemon's Prometheus metrics)."""

    def request(self, operation: str, status: str) -> None:
        """One request: its operation (get_object, ...) and HTTP status ("error": none came back)."""
        ...

    def transferred(self, direction: str, count: int) -> None:
        """Bytes of object bodies, direction "read" or "written"."""
        ...


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry a debug dump after their first line."""
    return " ".join(next((line for line in str(exc).splitlines() if line.strip()), "").split())[:300] or type(exc).__name__


class S3Store:
    """One channel prefix in a bucket. Thread-safe (one boto3 client per process, shared
    by threads); picklable for the extract stage's process pool (each worker process
    makes one store of its own for it, and one client)."""

    def __init__(self, url: str, *, stats: S3Stats | None = None, multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE,
                 fast_reads: bool = False):  # fmt: skip
        """`multipart_threshold`: a `writer` holds up to this many bytes in memory and PUTs
        them at once; a bigger object goes through a file, in parts of `part_size`.
        `fast_reads`: GET packages through obstore (`make_reader`), only in a process that
        never forks: obstore's runtime does not survive a fork (a forked child's GETs wait
        forever on the parent's runtime threads), so only the extract workers use it."""
        self.url = url.rstrip("/")
        self.multipart_threshold, self.part_size = multipart_threshold, part_size
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = self.url
        self.read_ahead = READ_AHEAD
        self.fast_reads = fast_reads
        self.stats = stats
        self._lock = threading.Lock()
        self._client: Any = None
        self._reader: Any = None
        self._pid = 0
        self._writer: ThreadPoolExecutor | None = None
        self._queued: dict[str, list[Future[bool]]] = {}  # folder -> PUTs queued by write(sync=False)
        self.page = PAGE  # keys per listing page (S3's most; a test asks for fewer)
        self._splits: dict[str, list[str]] = {}  # listed prefix -> split points: every 9/10 page-th key of its last listing (_list_all)
        self._seen: dict[str, str | None] = {}  # fenced key -> the ETag this process last wrote or read (None: absent)
        # whether this process still holds the channel's writer lease (ha/s3lease.py sets it); None: no lease
        self.lease_held: Callable[[], bool] | None = None
        self.unaborted: set[tuple[str, str]] = set()  # (full key, upload id) of our uploads an abort failed for
        # asked with the step right before every request that changes an object (fence.py
        # sets it to a pair's lease proof: a request it refuses is never sent)
        self.guard: Callable[[str], None] = _unguarded

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to an extract process as its address: unpickled there as that process's one
        store for it (one client per process, not one per batch of archives)."""
        return _in_this_process, (self.url, self.multipart_threshold, self.part_size)

    # --- the client -----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    client = make_client()
                    self._reader = make_reader(client, self.bucket) if self.fast_reads else None
                    self._client, self._pid = client, os.getpid()
        return self._client

    @property
    def reader(self) -> Any | None:
        """obstore's twin of the client for GETs of packages (stores/s3/client.py); None: botocore's."""
        self.client  # noqa: B018 - made with the client, in this process
        return self._reader

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, operation: str, *, missing_ok: bool = False, written: int = 0, **params: Any) -> Any:
        """One request; counts it; maps errors to StoreError (None for a 404 with missing_ok,
        and for a 412 on PutObject)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if operation in _CHANGES:
            self.guard(f"{operation} {params.get('Key', '')}")
        try:
            response = getattr(self.client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            code = str(exc.response.get("Error", {}).get("Code", ""))
            self._count(operation, str(status or "error"))
            if missing_ok and status == 404 and code not in ("NoSuchBucket",):
                return None
            if status == 412 and operation in ("put_object", "copy_object", "complete_multipart_upload"):
                return None  # a precondition: the caller decides what it means
            raise StoreError(self._explain(operation, status, code, exc)) from None
        except BotoCoreError as exc:
            self._count(operation, "error")
            raise StoreError(f"{self.url}: {operation}: {_one_line(exc)}") from None
        self._count(operation, str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)))
        if written:
            self._bytes("written", written)
        return response

    def _explain(self, operation: str, status: int, code: str, exc: BaseException) -> str:
        if code == "NoSuchBucket" or (operation == "head_bucket" and status == 404):
            return f"{self.url}: bucket {self.bucket!r} does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or status in (401, 403):
            return f"{self.url}: access denied ({code or status}): check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)"
        return f"{self.url}: {operation}: {code or status}: {_one_line(exc)}"

    def _count(self, operation: str, status: str) -> None:
        if self.stats is not None:
            self.stats.request(operation, status)

    def _bytes(self, direction: str, count: int) -> None:
        if self.stats is not None and count:
            self.stats.transferred(direction, count)

    def check(self) -> None:
        """Raise StoreError unless the bucket is there and these credentials may use it."""
        self._call("head_bucket")

    # --- listing --------------------------------------------------------------------------------

    def _list(self, folder: str, *, folders: bool = False) -> Iterator[dict[str, Any]]:
        """Every object (or with `folders`, every common prefix) directly under `folder`."""
        base = self._full(folder) + "/" if folder else (self.prefix + "/" if self.prefix else "")
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": base, "Delimiter": "/", "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", **params)
            if folders:
                for cp in page.get("CommonPrefixes", ()):
                    yield {"Key": cp["Prefix"][len(base) :].rstrip("/")}
            else:
                for obj in page.get("Contents", ()):
                    yield {**obj, "Key": obj["Key"][len(base) :]}
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def subdirs(self) -> list[str]:
        return sorted(entry["Key"] for entry in self._list("", folders=True) if entry["Key"])

    def list_packages(self, subdir: str) -> Listing:
        listing, sidecars = Listing(), []
        for obj in self._list(subdir):
            if _usable(obj["Key"]):
                mtime = float(int(obj["LastModified"].timestamp()))
                listing.append(FileState(obj["Key"], mtime, int(obj["Size"]), _etag(obj.get("ETag")), mtime))
            elif is_sidecar_name(obj["Key"]) and obj["Key"].isprintable():
                sidecars.append(_object_state(obj))
        listing.sort()  # ListObjectsV2 lists in UTF-8 byte order, which is code point order: a no-op check
        listing.sidecars = sorted(sidecars)
        return listing

    def list_subdir(self, subdir: str) -> Listing:
        """One listing of every key under `subdir/` (no delimiter): the packages, the
        sidecars, the other objects directly there (`files`) and the shard folder's
        (`shards`), listed in key ranges at once when the subdir is big (`_list_all`)."""
        base = self._full(subdir) + "/"
        listing, sidecars, files, shard_files = Listing(), [], [], {}
        shard_folder = SHARDS_DIR + "/"
        for name, mtime, size, etag in self._list_all(base):
            if "/" not in name:
                if not name:
                    continue  # a folder marker
                state = FileState(name, mtime, size, etag, mtime)
                if _usable(name):
                    listing.append(state)
                elif is_sidecar_name(name) and name.isprintable():
                    sidecars.append(state)
                else:
                    files.append(state)
            elif name.startswith(shard_folder) and "/" not in (rest := name[len(shard_folder) :]) and rest:
                shard_files[rest] = size
        listing.sort()  # a no-op check: the ranges are listed in key order and joined in order
        listing.sidecars, listing.files, listing.shards = sorted(sidecars), files, shard_files
        return listing

    def _list_all(self, base: str) -> list[tuple[str, float, int, str]]:
        """(name below `base`, LastModified in whole seconds, size, ETag) of every key under
        `base`, in key order, as one paged ListObjectsV2 without delimiter would give them.
        A page holds 1000 keys and each page waits for the one before, so a big prefix is
        listed in ranges at once (LIST_THREADS): range i is the keys after split point i up to
        and including split point i+1 (StartAfter; a range stops at the first key past its
        end), so the ranges neither overlap nor leave a gap, whatever the split points. They
        are every 900th key of this store's last listing of `base` (a range then fits one
        page: it ends at its last key, which is a split point); without one (a new
        process), a first page is listed alone (a small subdir is then one request) and the
        rest is split at first letters (`_guess_splits`)."""
        splits = self._splits.get(base)
        first: list[tuple[str, float, int, str]] = []
        if splits is None:
            first, more = self._list_range(base, None, None, pages=1)
            if not more:
                self._splits[base] = []
                return first
            splits = [s for s in _guess_splits(base) if s > base + first[-1][0]]
            starts: list[str | None] = [base + first[-1][0], *splits]
        else:
            starts = [None, *splits]
        ends: list[str | None] = [*starts[1:], None]
        if len(starts) == 1:
            parts = [self._list_range(base, starts[0], None)[0]]
        else:
            with ThreadPoolExecutor(min(LIST_THREADS, len(starts)), thread_name_prefix="s3-list") as pool:
                parts = [f.result()[0] for f in [pool.submit(self._list_range, base, a, b) for a, b in zip(starts, ends, strict=True)]]
        found = first
        for part in parts:
            found += part
        step = max(1, self.page * 9 // 10)  # a range still fits one page after a few keys more
        self._splits[base] = [base + found[i][0] for i in range(step, len(found), step)]
        return found

    def _list_range(self, base: str, after: str | None, upto: str | None, pages: int | None = None) -> tuple[list[tuple[str, float, int, str]], bool]:
        """The keys under `base` after `after` up to and including `upto` (None: from the
        first, to the last), at most `pages` pages; and whether there are more."""
        found: list[tuple[str, float, int, str]] = []
        token: str | None = None
        cut = len(base)
        while True:
            params: dict[str, Any] = {"Prefix": base, "MaxKeys": self.page}
            if token:
                params["ContinuationToken"] = token
            elif after is not None:
                params["StartAfter"] = after
            page = self._call("list_objects_v2", **params)
            for obj in page.get("Contents", ()):
                k = obj["Key"]
                if upto is not None and k > upto:
                    return found, False
                found.append((k[cut:], float(int(obj["LastModified"].timestamp())), int(obj["Size"]), _etag(obj.get("ETag"))))
                if k == upto:  # a split point that is a key: the range ends with it
                    return found, False
            if not page.get("IsTruncated"):
                return found, False
            token = page.get("NextContinuationToken")
            if pages is not None:
                pages -= 1
                if pages <= 0:
                    return found, True

    def stat_packages(self, subdir: str, names: Iterable[str]) -> tuple[list[FileState], list[str]]:
        wanted = sorted(n for n in names if _usable(n))
        if not wanted:
            return [], []
        if len(wanted) == 1:
            heads = [self._head(f"{subdir}/{wanted[0]}")]
        else:
            with ThreadPoolExecutor(min(STAT_THREADS, len(wanted))) as pool:
                heads = list(pool.map(self._head, (f"{subdir}/{n}" for n in wanted)))
        present, gone = [], []
        for name, head in zip(wanted, heads, strict=True):
            if head is None:
                gone.append(name)
            else:
                mtime = float(int(head["LastModified"].timestamp()))
                present.append(FileState(name, mtime, int(head["ContentLength"]), _etag(head.get("ETag")), mtime))
        return present, gone

    # --- the bucket client the streamed upload drives (upload.Bucket) ---------------------

    def head(self, key: str) -> dict[str, Any] | None:
        return self._head(key)

    def object_key(self, key: str) -> str:
        return self._full(key)

    def request(self, operation: str, *, missing_ok: bool = False, written: int = 0, **params: Any) -> Any:
        return self._call(operation, missing_ok=missing_ok, written=written, **params)

    def fenced_message(self, key: str, expected: str | None, operation: str) -> str:
        return self._fenced_message(key, expected, operation)

    def _head(self, key: str) -> dict[str, Any] | None:
        return self._call("head_object", missing_ok=True, Key=self._full(key))  # type: ignore[no-any-return]

    def list_files(self, folder: str) -> dict[str, int]:
        return {obj["Key"]: int(obj["Size"]) for obj in self._list(folder) if obj["Key"]}

    def stat_files(self, folder: str, names: Iterable[str] | None = None) -> tuple[list[FileState], list[str]]:
        """Outputs (or any objects) directly under `folder`, from listings, not one HEAD
        each: without names one listing of the folder; with names one listing per group
        of names sharing a stem (`repodata.json*`, `repodata_from_packages.json*` and
        `repodata_shards.msgpack.zst` are one ListObjectsV2 of `folder/repodata`), so the
        packages beside them are not listed. The ETag is the identity, as in a listing of
        packages."""
        if names is None:
            return sorted(_object_state(obj) for obj in self._list(folder) if obj["Key"]), []
        wanted = sorted(set(names))
        prefixes = _name_prefixes([n for n in wanted if n and "/" not in n and n.isprintable()])
        found: dict[str, FileState] = {}

        def scan(prefix: str) -> list[FileState]:
            return [_object_state(obj) for obj in self._list_named(folder, prefix)]

        if len(prefixes) > 1:
            with ThreadPoolExecutor(min(STAT_THREADS, len(prefixes))) as pool:
                listings = list(pool.map(scan, prefixes))
        else:
            listings = [scan(p) for p in prefixes]
        for listing in listings:
            found.update((f.path, f) for f in listing)
        return [found[n] for n in wanted if n in found], [n for n in wanted if n not in found]

    def _list_named(self, folder: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object directly under `folder` whose name starts with `prefix` (paged)."""
        base = self._full(folder) + "/" if folder else (self.prefix + "/" if self.prefix else "")
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": base + prefix, "Delimiter": "/", "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", **params)
            for obj in page.get("Contents", ()):
                yield {**obj, "Key": obj["Key"][len(base) :]}
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    # --- reading --------------------------------------------------------------------------------

    def open_package(self, subdir: str, name: str) -> IO[bytes]:
        if self.reader is not None:
            return self._get_package(subdir, name)
        response = self._call("get_object", missing_ok=True, Key=self._full(f"{subdir}/{name}"))
        if response is None:
            raise FileNotFoundError(f"{self.url}/{subdir}/{name}")
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned to the caller
        body = response["Body"]
        total = 0
        try:
            while chunk := body.read(CHUNK):
                spool.write(chunk)
                total += len(chunk)
        except Exception as exc:  # noqa: BLE001 - a connection dropped mid-body
            spool.close()
            self._bytes("read", total)
            raise StoreError(f"{self.url}/{subdir}/{name}: read interrupted: {_one_line(exc)}") from None
        finally:
            body.close()
        self._bytes("read", total)
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def _get_package(self, subdir: str, name: str) -> IO[bytes]:
        """open_package through obstore: one GET streamed into the same spool."""
        import obstore
        from obstore.exceptions import NotFoundError

        reader = self.reader
        assert reader is not None
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned to the caller
        total = 0
        try:
            for chunk in obstore.get(reader, self._full(f"{subdir}/{name}")):
                spool.write(chunk)
                total += len(chunk)
        except (NotFoundError, FileNotFoundError):  # obstore raises the builtin one for a 404
            spool.close()
            self._count("get_object", "404")
            raise FileNotFoundError(f"{self.url}/{subdir}/{name}") from None
        except Exception as exc:  # noqa: BLE001 - obstore's errors, a connection dropped mid-body
            spool.close()
            self._count("get_object", "error")
            self._bytes("read", total)
            raise StoreError(f"{self.url}/{subdir}/{name}: get_object: {_first_line(exc)}") from None
        self._count("get_object", "200")
        self._bytes("read", total)
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def read(self, key: str) -> bytes | None:
        response = self._call("get_object", missing_ok=True, Key=self._full(key))
        if response is None:
            return None
        try:
            data: bytes = response["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.url}/{key}: read interrupted: {_one_line(exc)}") from None
        self._bytes("read", len(data))
        return data

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    # --- writing --------------------------------------------------------------------------------

    def write(self, key: str, data: bytes, *, sync: bool = True) -> bool:
        if sync:
            return self._write(key, data)
        # queued: True means "will be written"; sync(folder) waits and raises any failure
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="s3-put")
            future = self._writer.submit(self._write, key, data)
            self._queued.setdefault(key.rsplit("/", 1)[0] if "/" in key else "", []).append(future)
        return True

    def _write(self, key: str, data: bytes) -> bool:
        ctype, cache_control = object_headers(key)
        digest = hashlib.sha256(data).hexdigest()
        params: dict[str, Any] = {"Key": self._full(key), "Body": data, "ContentType": ctype, "CacheControl": cache_control,
                                  "Metadata": {SHA256_META: digest}}  # fmt: skip
        if SHARD_FILE.match(key.rpartition("/")[2]):
            # content-addressed: a shard already there holds these bytes
            params["IfNoneMatch"] = "*"
            return self._call("put_object", written=len(data), **params) is not None
        head = self._head(key)
        same = head is not None and holds(head, len(data), digest, lambda: hashlib.md5(data).hexdigest())  # noqa: S324 - S3's ETag
        if not fenced_key(key):
            if same:
                return False
            return self._call("put_object", written=len(data), **params) is not None
        expected = self.expected(key, head)
        if same and _etag(head.get("ETag") if head else None) == expected:
            return False
        for attempt in (1, 2):
            response = self._call("put_object", written=len(data), **params, **_condition(expected))
            if response is not None:
                self._seen[key] = _etag(response.get("ETag"))
                return True
            if attempt == 1:
                expected = self.breached(key, expected, "PutObject")
        raise WriterFenced(self._fenced_message(key, expected, "PutObject"))

    # --- the bucket as a fence (FENCED_NAMES) ---------------------------------------------------

    def expected(self, key: str, head: dict[str, Any] | None) -> str | None:
        """The ETag `key` must still have for this process to write it: the one it last wrote
        or read, else (first sight) the one `head` shows now; None: absent."""
        if key not in self._seen:
            self._seen[key] = _etag(head.get("ETag")) if head is not None else None
        return self._seen[key]

    def wrote(self, key: str, etag: str | None) -> None:
        """The ETag of what this process just wrote under a fenced `key`."""
        if fenced_key(key):
            self._seen[key] = _etag(etag) or None

    def breached(self, key: str, expected: str | None, operation: str) -> str | None:
        """`key` no longer has the ETag this process last saw (a 412, or a HEAD before an
        operation the store does not make conditional). While the writer lease is still
        ours (ha/s3lease.py) it was changed from outside: one warning, and the ETag it has now
        to write against. Otherwise raise WriterFenced: another writer took over."""
        if self.lease_held is None or not self.lease_held():
            raise WriterFenced(self._fenced_message(key, expected, operation))
        head = self._head(key)
        now = _etag(head.get("ETag")) if head is not None else None
        log.warning("published file changed from outside while this writer holds the lease; replacing it",
                    key=f"{self.url}/{key}", expected_etag=expected, found_etag=now)  # fmt: skip
        self._seen[key] = now
        return now

    def _fenced_message(self, key: str, expected: str | None, operation: str) -> str:
        was = f"If-Match {expected}" if expected is not None else "If-None-Match *"
        return (f"{self.url}/{key}: another writer replaced it since this process last wrote or read it "
                f"({operation} {was}: 412 Precondition Failed); this writer is fenced and steps back")  # fmt: skip

    # --- conditional requests (the lease object) ------------------------------------------------

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of an object, None when absent."""
        response = self._call("get_object", missing_ok=True, Key=self._full(key))
        if response is None:
            return None
        data: bytes = response["Body"].read()
        self._bytes("read", len(data))
        return data, _etag(response.get("ETag"))

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> str | None:
        """PUT only if the object is absent (etag=None) or still has `etag`; the new ETag,
        None when the condition failed (412). RGW wants If-Match unquoted."""
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        response = self._call("put_object", written=len(data), Key=self._full(key), Body=data,
                              ContentType="application/json", CacheControl="no-store", **condition)  # fmt: skip
        return None if response is None else _etag(response.get("ETag"))

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._full(key))

    def writer(self, key: str, *, size: int | None = None) -> AbstractContextManager[StreamWriter]:
        """A streamed write through a temporary file: one PUT up to `multipart_threshold`,
        a multipart upload above (stores/s3/upload.py)."""
        return spooled(self, key)

    def copy(self, src: str, dst: str, *, sync: bool = True) -> bool:
        """A server-side copy: the bytes do not travel again. Durable when it returns. A
        fenced `dst` is checked by a HEAD first (RGW 16 ignores If-Match on CopyObject; the
        condition is sent anyway for stores that honour it)."""
        head = self._head(src)
        if head is None:
            raise FileNotFoundError(f"{self.url}/{src}")
        old = self._head(dst)
        fenced = fenced_key(dst)
        expected = self.expected(dst, old) if fenced else None
        found = _etag(old.get("ETag")) if old is not None else None
        if old is not None and _same_object(head, old) and (not fenced or found == expected):
            return False
        if fenced and found != expected:
            expected = self.breached(dst, expected, "CopyObject")
        ctype, cache_control = object_headers(dst)
        condition = _condition(expected) if fenced else {}
        response = self._call("copy_object", Key=self._full(dst), CopySource={"Bucket": self.bucket, "Key": self._full(src)},
                              MetadataDirective="REPLACE", ContentType=ctype, CacheControl=cache_control,
                              Metadata=dict(head.get("Metadata") or {}), **condition)  # fmt: skip
        if response is None:  # 412: a store that honours the condition refused it
            raise WriterFenced(self._fenced_message(dst, expected, "CopyObject"))
        self.wrote(dst, (response.get("CopyObjectResult") or {}).get("ETag"))
        return True

    def remove(self, key: str) -> bool:
        if self._head(key) is None:
            return False
        self._call("delete_object", Key=self._full(key))
        if fenced_key(key):
            self._seen[key] = None
        return True

    def sync(self, folder: str) -> None:
        """A PUT is durable when it returns: wait for the ones queued under `folder`."""
        with self._lock:
            futures = self._queued.pop(folder.rstrip("/"), [])
        failure: BaseException | None = None
        for future in futures:
            exc = future.exception()
            failure = failure or exc
        if failure is not None:
            raise failure

    def prepare(self, subdir: str, *, recover: bool) -> None:
        """Folders do not exist in a bucket, and no write leaves temporaries behind."""


_stores: dict[tuple[int, str, int, int], S3Store] = {}  # (pid, url, threshold, part size) -> an unpickled store
_stores_lock = threading.Lock()


def _in_this_process(url: str, multipart_threshold: int, part_size: int) -> S3Store:
    """The store an extract process reads with (see S3Store.__reduce__)."""
    at = (os.getpid(), url, multipart_threshold, part_size)
    with _stores_lock:
        if at not in _stores:
            _stores[at] = S3Store(url, multipart_threshold=multipart_threshold, part_size=part_size, fast_reads=True)
        return _stores[at]


_CHANGES = frozenset({"put_object", "copy_object", "complete_multipart_upload", "delete_object", "delete_objects"})


def _unguarded(step: str) -> None:
    pass


def _usable(name: str) -> bool:
    return "/" not in name and is_package_name(name) and name.isprintable()


def _object_state(obj: dict[str, Any]) -> FileState:
    """A listed object's state, as `list_packages` gives it (LastModified in whole seconds)."""
    mtime = float(int(obj["LastModified"].timestamp()))
    return FileState(obj["Key"], mtime, int(obj["Size"]), _etag(obj.get("ETag")), mtime)


def _guess_splits(base: str) -> list[str]:
    """Split points for a prefix never listed before (GUESSED_SPLITS; any key still lands in
    exactly one range: these only decide how the work is shared)."""
    return sorted(base + point for point in GUESSED_SPLITS)


def _name_prefixes(names: list[str]) -> list[str]:
    """The fewest listing prefixes for sorted `names`: each name's stem (up to its first
    dot), merged into the previous prefix when that begins it."""
    prefixes: list[str] = []
    for name in names:
        stem = name.split(".", 1)[0] or name
        if not (prefixes and stem.startswith(prefixes[-1])):
            prefixes.append(stem)
    return prefixes


def _same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two HEADs describe the same bytes: size, then our sha256, else the ETag."""
    if int(a.get("ContentLength", -1)) != int(b.get("ContentLength", -2)):
        return False
    sha_a, sha_b = (h.get("Metadata", {}).get(SHA256_META) for h in (a, b))
    if sha_a and sha_b:
        return bool(sha_a == sha_b)
    return bool(_etag(a.get("ETag"))) and _etag(a.get("ETag")) == _etag(b.get("ETag"))
