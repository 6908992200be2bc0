"""Stage 1: the cache's `fs` stage from what the channel store lists now."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from conda_indexd.caches.base import FileState, SubdirCache
from conda_indexd.names import is_package_name
from conda_indexd.stores.base import ChannelStore


def update_fs_stage(
    cache: SubdirCache,
    store: ChannelStore,
    subdir: str,
    *,
    touched: Collection[str] | None,
    hold: Collection[str] = (),
    listing: Sequence[FileState] | None = None,
    keep_missing: bool = False,
) -> tuple[set[str] | None, set[str]]:
    """Bring the fs rows in line with the store; returns (the names looked at (None: the
    whole subdir was listed), the names whose rows changed).

    touched=None lists the whole subdir (or takes the caller's fresh `listing`);
    otherwise only the named files are stat'ed. Names in `hold` (uploads in progress)
    keep their previous fs row.
    """
    if touched is None:
        files = store.list_packages(subdir) if listing is None else listing
        if hold:
            old = cache.fs_state()
            files = [f for f in files if f.path not in hold] + [old[name] for name in hold if name in old]
        if keep_missing:
            old = cache.fs_state()
            changed = [f for f in files if f.path not in old or tuple(old[f.path][:4]) != tuple(f[:4])]
            cache.update_fs_state(changed, ())
            return None, {f.path for f in changed}
        return None, cache.replace_fs_state(files)
    names = {n for n in touched if is_package_name(n) and n not in hold}
    present, gone = store.stat_packages(subdir, names)
    cache.update_fs_state(present, () if keep_missing else gone)
    return names, names
