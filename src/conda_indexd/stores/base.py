"""The channel store seam: where packages live and where outputs are published.

A store holds files under keys `subdir/name` (and `subdir/shards/name`, and channel-level
files at the top). The indexer only talks to a `ChannelStore`; `LocalStore`
(stores/local.py) is a folder on disk. The interface is shaped for object storage too:
- a listing may be paged and is only a snapshot; `FileState.identity` is whatever tells
  one version of a file from the next (inode+ctime locally, the ETag remotely);
- `write` is all-or-nothing for readers (a rename locally, one PUT remotely) and is
  skipped when the key already holds exactly those bytes; `writer` is the same for a
  file streamed in pieces (repodata.json of a big subdir is never one bytes object):
  locally a temporary file compared with the old one as it grows, remotely a multipart
  upload or a spooled file PUT on `commit`;
- `copy` publishes what one key holds under a second key without sending the bytes again
  (repodata.json of an unpatched subdir is repodata_from_packages.json): a hard link
  renamed over the old name locally, a server-side CopyObject remotely;
- `sync` is the barrier between "these files exist" and "publish what names them"
  (a folder fsync locally, nothing remotely, where a PUT is durable when it returns);
- `stat_packages` is for package files only (a bucket store answers nothing else);
  published files are stat'ed with `stat_files`, with the same change identity, so a
  deleted, truncated or rewritten output is noticed by the next run (pipeline/quiet.py).
The shared contract every store must pass is tests/test_contract_store.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import IO, Protocol

from conda_indexd.errors import IndexdError
from conda_indexd.errors import Unreadable as Unreadable  # re-exported: the seam raises it
from conda_indexd.model import FileState as FileState  # re-exported: the seam lists them
from conda_indexd.model import Listing as Listing  # re-exported: the seam lists them


class StoreError(IndexdError):
    """The store cannot be used right now (unreachable, no such bucket, access denied):
    one line for people. Not an OSError on purpose: a transport fault fails the run and
    is retried; it never marks a package unreadable."""


class ChannelStore(Protocol):
    """Where a channel's packages and outputs live."""

    location: str  # for logs and the status page
    # how many packages the extract stage may read at once per worker: a bucket's GETs
    # overlap (each waits on the network); 1 for a folder
    read_ahead: int

    def check(self) -> None:
        """Raise StoreError (one line) unless the store can be used now: a bucket is there
        and these credentials may use it. A folder has nothing to check before its listing."""
        ...

    def subdirs(self) -> list[str]:
        """Names of the folders at the top of the channel."""
        ...

    def list_packages(self, subdir: str) -> Listing:
        """Every package file directly in `subdir` (none when it does not exist), and in
        `.sidecars` the attestation sidecars (plain files) of the same listing."""
        ...

    def list_subdir(self, subdir: str) -> Listing:
        """`list_packages` plus what else the same look saw, for a full run: `files`, every
        other plain file directly in `subdir` (the outputs, as `stat_files` gives them) and
        `shards`, {name: size} of the plain files in `subdir/shards` (`list_files`). A
        bucket lists the subdir's keys once for all of it; a folder lists two folders."""
        ...

    def stat_packages(self, subdir: str, names: Iterable[str]) -> tuple[list[FileState], list[str]]:
        """The named package files split into (present with their state, gone). For
        package files only: a name that is not a package file name (repodata.json, a
        shard) may be left out of both lists; use `stat_files` for those."""
        ...

    def stat_files(self, folder: str, names: Iterable[str] | None = None) -> tuple[list[FileState], list[str]]:
        """Any plain files directly in `folder` (outputs, shards, packages alike), as
        (present with their state, missing), each list sorted by name. With `names`, only
        those are looked at and every one of them is in exactly one list; without, every
        plain file there is present and none is missing. `identity` changes with every
        rewrite of a file, whatever its size and mtime (the ETag remotely)."""
        ...

    def open_package(self, subdir: str, name: str) -> AbstractContextManager[IO[bytes]]:
        """A seekable binary stream of one package. Raises `Unreadable`, or
        FileNotFoundError when it is gone."""
        ...

    def read(self, key: str) -> bytes | None:
        """A published file's bytes, None when absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a published file is there."""
        ...

    def write(self, key: str, data: bytes, *, sync: bool = True) -> bool:
        """Publish `data` at `key` atomically, only when it differs. True if written.
        sync=False leaves the durability barrier to a later `sync` of its folder."""
        ...

    def writer(self, key: str, *, size: int | None = None) -> AbstractContextManager[StreamWriter]:
        """`write` for a file too big to hold: its bytes arrive in pieces (see
        StreamWriter). The same rules: atomic for readers, skipped when equal. `size`, when
        the caller knows the total up front, lets the store skip comparing with an old file
        of another size (a wrong hint only costs that shortcut: commit goes by the bytes)."""
        ...

    def copy(self, src: str, dst: str, *, sync: bool = True) -> bool:
        """Publish the bytes `src` holds under `dst` too, atomically for readers, without
        sending them again; skipped when `dst` already holds them. True if `dst` changed.
        `src` must be committed (a write queued with sync=False is synced first); raises
        FileNotFoundError when it is absent. A later write of either key replaces only
        that key (locally both names may share one inode: every writer here and
        conda-index's replace a file by renaming a new one over it, never in place)."""
        ...

    def remove(self, key: str) -> bool:
        """Delete a published file. True if it was there."""
        ...

    def sync(self, folder: str) -> None:
        """Make every write under `folder` durable before anything names those files."""
        ...

    def list_files(self, folder: str) -> dict[str, int]:
        """{name: size} of the plain files directly in `folder` (empty when absent)."""
        ...

    def prepare(self, subdir: str, *, recover: bool) -> None:
        """Make `subdir` writable (never the channel itself: a vanished channel raises);
        with `recover`, also remove what a killed writer left behind."""
        ...


def key(*parts: str) -> str:
    """A store key from its parts (`key("noarch", "shards", name)`)."""
    return "/".join(p for p in parts if p)


class StreamWriter(Protocol):
    """One file being written in pieces (ChannelStore.writer). Nothing is visible to
    readers until `commit`, which publishes it atomically, only when the bytes differ
    from what the key holds (True if written). Leaving the writer's context without a
    commit (or on an exception) discards it."""

    def write(self, data: bytes) -> None: ...

    def commit(self, *, sync: bool = True) -> bool: ...
