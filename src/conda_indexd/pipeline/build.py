"""Stage 3: every output file of a subdir, from the memo's records (pure but for the
user's patch generator, which is called here).

repodata_from_packages.json and repodata.json are `repodata.Document`s: streams of the
records' serialised pieces, never one string. Patches are applied per record
(patches.per_record): only the records an instruction names are parsed, patched and
serialised again, and a record's patched piece is kept (in the memo's `patched`) until its
archive or its instructions change. Instructions that change no record (conda-index's
`{"name": {}}` entries) cost reading them. A patch *generator* is user code that is given
the whole unpatched document, so with one the document is parsed once per build.

Order of the result is the publish order (docs/spec §8.2): repodata_from_packages.json, fresh
patch_instructions.json, repodata.json, then the files derived from it. Without patches
the two documents are the same object (published from one pass).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conda_indexd.config import IndexConfig
from conda_indexd.formats import attestations, channelmeta, current, origin, patches, repodata, timestamps
from conda_indexd.names import CURRENT, PATCH_INSTRUCTIONS, REPODATA, REPODATA_FROM_PACKAGES, RUN_EXPORTS, compact_json
from conda_indexd.pipeline import patchsource
from conda_indexd.pipeline.memo import RecordMemo, from_pieces
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

Output = bytes | repodata.Document
Patched = dict[str, tuple[str, bytes | None]]  # see RecordMemo.patched (b"": unchanged by its patch)


@dataclass
class Built:
    outputs: dict[str, Output]  # {filename: bytes or a Document} in publish order
    instructions: dict[str, Any] = field(default_factory=dict)  # patches applied (also to shards)
    patched_records: int = 0  # records whose piece the patches changed
    revisions: dict[str, Any] | None = None  # CEP-48 info.repodata_revisions of repodata.json (the shard index says the same)


def build_outputs(
    config: IndexConfig,
    subdir: str,
    pieces: Iterable[tuple[str, str]],
    *,
    existing_instructions: bytes | None,
    run_exports: Iterable[tuple[str, str | None]] = (),
    overlay: dict[str, Any] | None = None,
) -> Built:
    """`pieces`: (filename, record piece) sorted by filename (RecordMemo.pieces); the
    other arguments as build_from_memo."""
    return build_from_memo(config, subdir, from_pieces(pieces), existing_instructions=existing_instructions, run_exports=run_exports, overlay=overlay)


def build_from_memo(
    config: IndexConfig,
    subdir: str,
    memo: RecordMemo,
    *,
    existing_instructions: bytes | None,
    run_exports: Iterable[tuple[str, str | None]] = (),
    overlay: dict[str, Any] | None = None,
    attested: dict[str, str] | None = None,
) -> Built:
    """`memo`: the records; its `patched` pieces of the last build are brought up to date here;
    `existing_instructions`: the subdir's published patch_instructions.json, if any;
    `run_exports`: the rows of run_exports.json when config.run_exports;
    `overlay`: origin metadata as patch instructions (formats/origin.py), applied under the patches;
    `attested`: {filename: attestations_sha256} of the sidecars that check out (formats/attestations.py).
    Raises PatchError before anything is published when the patch source fails."""
    patched = memo.patched
    from_packages = memo.document(subdir, config.base_url, **_shape(config))
    outputs: dict[str, Output] = {REPODATA_FROM_PACKAGES: from_packages}
    patched_doc: Output = from_packages
    instructions: dict[str, Any] = {}
    count = 0
    generator = patchsource.generator_path(config.channel, config.patch_generator)
    if generator is not None or existing_instructions is not None or overlay or attested:
        doc = json.loads(from_packages.to_bytes()) if generator is not None else {}
        instructions, fresh = patchsource.instructions_for(subdir, doc, generator, existing_instructions, owned=True)
        del doc
        if fresh:
            outputs[PATCH_INSTRUCTIONS] = patches.serialize(instructions)
        instructions = origin.layer(overlay, instructions)  # never written to patch_instructions.json
        instructions, touched = timestamps.strip_patches(instructions)  # CEP-47: never patched
        if touched:
            log.warning("patch instructions may not change indexed_timestamp; ignored for these files", subdir=subdir, count=len(touched), files=touched[:20])
        instructions, touched = attestations.strip(instructions)  # only the sidecars say it
        if touched:
            log.warning("patch instructions may not change attestations_sha256; ignored for these files", subdir=subdir, count=len(touched), files=touched[:20])
        instructions = attestations.layer(attested or {}, instructions)
        ops = patches.per_record(instructions)
        if ops:
            doc_patched, count = _patched_document(config, subdir, memo, ops)
            if count:
                patched_doc = doc_patched
    if not count:
        patched.clear()
    outputs[REPODATA] = patched_doc
    if config.current_repodata:  # derived files after repodata.json (docs/spec §8.2)
        data = patched_doc if isinstance(patched_doc, bytes) else patched_doc.to_bytes()
        versions = config.current_index_versions
        pins = current.parse_pins(versions.read_text(), str(versions)) if versions else {}
        doc = json.loads(data)
        doc.pop("v3", None)  # CEP-48: current_repodata is for old clients, from the legacy maps only
        doc["info"].pop("repodata_revisions", None)
        doc["info"].pop("channel_relations", None)
        outputs[CURRENT] = compact_json(current.build(doc, pins)).encode("ascii")
    if config.run_exports:  # never patched (CEP-12)
        outputs[RUN_EXPORTS] = repodata.build_run_exports(subdir, run_exports)
    revisions = patched_doc.revisions if isinstance(patched_doc, repodata.Document) else None
    return Built(outputs, instructions, count, revisions)


def _patched_document(config: IndexConfig, subdir: str, memo: RecordMemo, ops: dict[str, list[patches.Op]]) -> tuple[repodata.Document, int]:
    """repodata.json with each named record patched; the others keep their piece."""
    patched = memo.patched
    fresh: Patched = {}
    changed: dict[str, bytes | None] = {}
    for fn, record_ops in ops.items():
        if fn not in memo:
            continue
        stamp = f"{memo.sha256(fn)}+{patches.ops_digest(record_ops)}"
        known = patched.get(fn)
        if known is None or known[0] != stamp:
            piece = memo.piece(fn)
            new = _patch_piece(fn, piece, record_ops)
            known = (stamp, b"" if new == piece else new)  # b"": the patch changes nothing
        fresh[fn] = known
        if known[1] != b"":
            changed[fn] = known[1]
    patched.clear()
    patched.update(fresh)
    return memo.document(subdir, config.base_url, changed, **_shape(config)), len(changed)


def _shape(config: IndexConfig) -> dict[str, Any]:
    """The document options beyond the records: CEP-48 v3 and CEP-42 relations."""
    return {
        "all_v3": config.repodata_next,
        "message": config.v3_message,
        "v3_always": config.v3_always,
        "relations": channelmeta.relations_info(config.channel_relations),
    }


def _patch_piece(fn: str, piece: bytes, ops: list[patches.Op]) -> bytes | None:
    """A record's patched piece (None when the instructions remove it)."""
    prefix = len(json.dumps(fn)) + 1
    record = json.loads(piece[prefix:])
    if patches.patch_record(record, ops):
        return None
    return piece[:prefix] + compact_json(record).encode("ascii")
