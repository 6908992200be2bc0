"""Stage 4b: write a subdir's shards and shard index through the channel store, and
collect shards nobody names any more (the steps are in formats/shards.py's module doc).

The pure part (which names to encode, the new bytes) is shards.plan_shards and
shards.encode_shards; this class only reads and writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from conda_indexd.caches.base import ShardKey, SubdirCache
from conda_indexd.formats import shards
from conda_indexd.names import SHARD_INDEX, SHARD_STATE, SHARDS_DIR
from conda_indexd.pipeline import forked
from conda_indexd.stores.base import ChannelStore, key
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

WRITERS = 8  # shard files written (and fsynced) at once
Carried = tuple[shards.ShardState, dict[str, int]]  # (state, {digest: size} on disk)


@dataclass
class ShardsReport:
    names: int = 0
    encoded: int = 0  # shards built this run
    written: list[str] = field(default_factory=list)  # files replaced, relative to the subdir
    deleted: list[str] = field(default_factory=list)  # unreferenced shards past retention


class ShardStore:
    """The shards of one subdir's outputs and what was remembered about them."""

    def __init__(self, store: ChannelStore, cache: SubdirCache, subdir: str, carried: Carried | None = None,
                 listed: dict[str, int] | None = None):  # fmt: skip
        """`carried`: the state and shard listing the previous successful run of this
        subdir ended with (the daemon keeps them in the memo; nothing else wrote shards
        since, but for the files `publish(verify=)` names): neither is read again.
        `listed`: without `carried`, {name: size} of the shard folder as this run's listing
        of the subdir saw it (ChannelStore.list_subdir): the folder is not listed again."""
        self.store = store
        self.cache = cache
        self.subdir = subdir
        self.folder = key(subdir, SHARDS_DIR)
        self.carried = carried is not None
        if carried is not None:
            self.state, self.on_disk = carried
        else:
            self.state = shards.ShardState.from_bytes(cache.load_state(SHARD_STATE))
            self.on_disk = {}  # {digest: size} seen by publish()
        self.listed = listed

    @property
    def carry(self) -> Carried:
        return self.state, self.on_disk

    def publish(
        self,
        keys: shards.Keys,
        changed: set[str] | None,
        instructions: dict[str, Any] | None,
        base_url: str | None,
        report: ShardsReport,
        verify: Collection[str] = (),
        stamped: bool = False,
        all_v3: bool = False,
        revisions: dict[str, Any] | None = None,
        relations: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        """Steps 1-3: new shard files, one durability barrier, then the index. `workers`:
        a big build is encoded by that many forked processes (pipeline/forked.py). `verify`:
        shard files (`shards/<digest>.msgpack.zst`) someone else may have changed; one
        whose bytes no longer hash to its name counts as missing, so it is rewritten, and
        so does one listed with another size than it was published with (truncated from
        outside). A damaged shard is removed before it is written again: a bucket PUTs
        shards only where none is (If-None-Match), which would keep the damaged one."""
        if not self.carried:
            self.on_disk = shards.shard_digests(self.listed if self.listed is not None else self.store.list_files(self.folder))
        published = {r.digest: r.size for r in self.state.remembered.values()}
        damaged = {d for d, size in self.on_disk.items() if published.get(d, size) != size}
        for file in verify:
            digest = file.removeprefix(SHARDS_DIR + "/").removesuffix(".msgpack.zst")
            if digest in self.on_disk and not self._intact(digest):
                damaged.add(digest)
        for digest in sorted(damaged):
            self.store.remove(key(self.folder, shards.shard_file(digest)))
            del self.on_disk[digest]
        plan = shards.plan_shards(self.state, keys, changed, instructions, self.on_disk, stamped=stamped, all_v3=all_v3)
        kept = plan.kept
        previous = self.state.remembered
        wrote = False
        for encoded in self._encoded(keys, plan.todo, instructions, stamped, all_v3, workers):
            files = [(key(self.folder, shards.shard_file(r.digest)), data) for data, r in encoded.values()]
            # each write fsyncs its file: many at once let the file system commit them together
            with ThreadPoolExecutor(WRITERS) if len(files) > 8 else contextlib.nullcontext() as pool:
                mapper = pool.map if pool is not None else map
                done = list(mapper(lambda f: self.store.write(f[0], f[1], sync=False), files))  # same bytes: kept
            for (name, (_, remembered)), fresh in zip(encoded.items(), done, strict=True):
                filename = shards.shard_file(remembered.digest)
                if fresh:
                    report.written.append(f"{SHARDS_DIR}/{filename}")
                    wrote = True
                kept[name] = remembered
                self.on_disk[remembered.digest] = remembered.size
                report.encoded += 1
        if wrote:
            self.store.sync(self.folder)  # every shard is durable before the index names it
        self.state.remembered, self.state.salt, self.state.patched = kept, plan.salt, plan.patched
        report.names = len(kept)
        digests = {name: bytes.fromhex(r.digest) for name, r in kept.items()}
        index_key = key(self.subdir, SHARD_INDEX)
        # the carried state is what the last run's published index says (it wrote or
        # checked it): when a name's shard moved, that index is not current, unread
        if (self.carried and _moved(previous, kept, plan.todo)) or not shards.index_is_current(
            self.store.read(index_key), self.subdir, digests, base_url, revisions, relations
        ):
            self.store.write(index_key, shards.encode_index(self.subdir, digests, base_url=base_url, revisions=revisions, relations=relations))
            report.written.append(SHARD_INDEX)

    def _encoded(
        self, keys: shards.Keys, todo: dict[str, str], instructions: dict[str, Any] | None, stamped: bool, all_v3: bool, workers: int
    ) -> Iterator[dict[str, tuple[bytes, shards.Remembered]]]:
        """The new shards of the names in `todo`, a batch of whole names at a time; in
        forked workers when there are many records (a full build)."""
        batches = _batches(keys, todo)
        head: list[list[ShardKey]] = []
        opener = self.cache.fork_reader() if workers > 1 else None
        if opener is not None:
            records = 0
            while records < forked.POOL_FROM and (batch := next(batches, None)) is not None:
                head.append(batch)
                records += len(batch)
        if opener is None or records < forked.POOL_FROM:
            for batch in itertools.chain(head, batches):
                yield shards.encode_shards(todo, self.cache.records_for([k.path for k in batch]), instructions, stamped=stamped, all_v3=all_v3)
            return
        failed = False
        with forked.Pool(opener, workers, (todo, instructions, stamped, all_v3)) as pool:
            for batch, result in pool.map(_encode_batch, itertools.chain(head, batches)):
                if isinstance(result, BaseException):
                    if not failed:
                        log.warning("a shard worker failed; encoding its shards in this process", subdir=self.subdir, error=repr(result))
                        failed = True
                    result = shards.encode_shards(todo, self.cache.records_for([k.path for k in batch]), instructions, stamped=stamped, all_v3=all_v3)
                yield result

    def _intact(self, digest: str) -> bool:
        data = self.store.read(key(self.folder, shards.shard_file(digest)))
        return data is not None and hashlib.sha256(data).hexdigest() == digest

    def collect(self, retention: float, report: ShardsReport, now: float | None = None) -> None:
        """Step 4: delete shard files unreferenced for longer than `retention` seconds."""
        now = time.time() if now is None else now
        referenced = {r.digest for r in self.state.remembered.values()}
        unreferenced = {}
        for digest in sorted(self.on_disk):
            if digest in referenced:
                continue
            since = self.state.unreferenced.get(digest, now)
            if now - since >= retention:
                self.on_disk.pop(digest, None)
                if self.store.remove(key(self.folder, shards.shard_file(digest))):
                    report.deleted.append(f"{SHARDS_DIR}/{shards.shard_file(digest)}")
            else:
                unreferenced[digest] = since
        self.state.unreferenced = unreferenced

    def save(self) -> None:
        """Append what changed to the saved state (formats/shards.ShardState), or save it
        whole when that is due or the saved one is not as this state last saw it."""
        state = self.state
        line = state.change_bytes()  # b"": unchanged (appending nothing checks the saved one is there)
        if line is not None and state.saved is not None and self.cache.append_state(SHARD_STATE, line, state.saved.size):
            state.mark_saved(state.saved.size + len(line), state.saved.snapshot)
            return
        data = state.to_bytes()
        self.cache.save_state(SHARD_STATE, data)
        state.mark_saved(len(data), len(data))


def _moved(previous: dict[str, shards.Remembered], kept: dict[str, shards.Remembered], encoded: Collection[str]) -> bool:
    """Whether the name -> shard map changed: a name dropped, or one of the `encoded`
    names (every name not kept from `previous` is one) given another shard."""
    if len(kept) != len(previous):
        return True
    for name in encoded:
        old, new = previous.get(name), kept.get(name)
        if old is None or new is None or old.digest != new.digest:
            return True
    return False


BATCH = 5000  # records encoded at once (whole names): memory stays bounded on a full build


def _batches(keys: shards.Keys, todo: dict[str, str]) -> Iterator[list[ShardKey]]:
    """The keys of the names to encode, in batches of whole names of about BATCH records."""
    batch: list[ShardKey] = []
    for k in keys.shard_keys(todo):
        if len(batch) >= BATCH and k.name != batch[-1].name:
            yield batch
            batch = []
        batch.append(k)
    if batch:
        yield batch


def _encode_batch(batch: list[ShardKey]) -> dict[str, tuple[bytes, shards.Remembered]]:
    """A forked worker's batch of whole names (pipeline/forked.py), read and encoded there."""
    todo, instructions, stamped, all_v3 = forked.context()
    return shards.encode_shards(todo, forked.reader().records_for([k.path for k in batch]), instructions, stamped=stamped, all_v3=all_v3)


def withdraw(store: ChannelStore, subdir: str) -> bool:
    """--no-write-shards: remove the index so clients stop preferring stale shards.
    The shard files stay (clients that cached the index may still ask for them)."""
    return store.remove(key(subdir, SHARD_INDEX))
