"""Stage 3: every output file of a subdir as bytes, from the memo's records (pure but for
the user's patch generator, which is called here).

Order of the result is the publish order (§8.2): repodata_from_packages.json, fresh
patch_instructions.json, repodata.json, then the files derived from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import current, origin, patches, repodata
from .config import IndexConfig
from .names import CURRENT, PATCH_INSTRUCTIONS, REPODATA, REPODATA_FROM_PACKAGES, RUN_EXPORTS, compact_json


@dataclass
class Built:
    outputs: dict[str, bytes]  # {filename: bytes} in publish order
    instructions: dict[str, Any] = field(default_factory=dict)  # patches applied (also to shards)


def build_outputs(
    config: IndexConfig,
    subdir: str,
    pieces: Iterable[tuple[str, str]],
    *,
    existing_instructions: bytes | None,
    run_exports: Iterable[tuple[str, str | None]] = (),
    overlay: dict[str, Any] | None = None,
) -> Built:
    """`pieces`: (filename, record piece) sorted by filename (RecordMemo.pieces);
    `existing_instructions`: the subdir's published patch_instructions.json, if any;
    `run_exports`: the rows of run_exports.json when config.run_exports;
    `overlay`: origin metadata as patch instructions (origin.py), applied under the patches.
    Raises PatchError before anything is published when the patch source fails."""
    from_packages = repodata.build_repodata(subdir, pieces, base_url=config.base_url)
    outputs: dict[str, bytes] = {REPODATA_FROM_PACKAGES: from_packages}
    patched: bytes = from_packages
    instructions: dict[str, Any] = {}
    doc: dict[str, Any] | None = None  # the parsed (then patched) document, parsed once
    generator = patches.generator_path(config.channel, config.patch_generator)
    if generator is not None or existing_instructions is not None or overlay:
        doc = json.loads(from_packages)
        instructions, fresh = patches.instructions_for(subdir, doc, generator, existing_instructions)
        if fresh:
            outputs[PATCH_INSTRUCTIONS] = patches.serialize(instructions)
        instructions = origin.layer(overlay, instructions)  # never written to patch_instructions.json
        if instructions:
            patched = compact_json(patches.apply(doc, instructions)).encode("ascii")
    outputs[REPODATA] = patched
    if config.current_repodata:  # derived files after repodata.json (§8.2)
        doc = json.loads(patched) if doc is None else doc
        outputs[CURRENT] = compact_json(current.build(doc, current.load_pins(config.current_index_versions) if config.current_index_versions else {})).encode("ascii")
    if config.run_exports:  # never patched (CEP-12)
        outputs[RUN_EXPORTS] = repodata.build_run_exports(subdir, run_exports)
    return Built(outputs, instructions)
