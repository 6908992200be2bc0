"""Regenerate the golden fixture channel and its expected outputs (run once, by hand).

    python tests/golden/make_golden.py

The packages are built with tests/pkgfactory.py and committed as binary files, so the
golden test does not depend on this machine's bz2/zstd producing the same bytes. The
expected files are derived from the spec (tests/spec.py), never from the product.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pkgfactory as f  # noqa: E402
import spec  # noqa: E402

CHANNEL = HERE / "channel"
EXPECTED = HERE / "expected"


def build_channel(root: Path) -> None:
    f.make_tar_bz2(
        root / "noarch" / "golden-py-0.3.1-pyhd8ed1ab_0.tar.bz2",
        f.index_json(
            "golden-py",
            "0.3.1",
            "pyhd8ed1ab_0",
            "noarch",
            noarch="python",
            depends=["python >=3.8"],
            summary="Gr\u00fc\u00dfe, \u4e16\u754c \u2603 \U0001f600",
        ),
        {"site-packages/golden_py/__init__.py": b"VERSION = '0.3.1'\n"},
        about={"summary": "Gr\u00fc\u00dfe", "license": "MIT"},
    )
    f.make_conda(
        root / "noarch" / "golden-py-0.3.1-pyhd8ed1ab_0.conda",
        f.index_json(
            "golden-py",
            "0.3.1",
            "pyhd8ed1ab_0",
            "noarch",
            noarch="python",
            depends=["python >=3.8"],
            summary="Gr\u00fc\u00dfe, \u4e16\u754c \u2603 \U0001f600",
        ),
        {"site-packages/golden_py/__init__.py": b"VERSION = '0.3.1'\n"},
        about={"summary": "Gr\u00fc\u00dfe", "license": "MIT"},
    )
    f.make_conda(
        root / "linux-64" / "libgold-1.2.0-h1234567_2.conda",
        f.index_json(
            "libgold",
            "1.2.0",
            "h1234567_2",
            "linux-64",
            build_number=2,
            depends=["libgcc-ng >=12"],
            constrains=["golden-py >=0.3"],
            track_features="",
            has_prefix=True,
            ucs=4,
            machine="x86_64",
            operatingsystem="linux",
            binstar={"channel": "main"},
            mtime=1234,
            requires_features={},
            **{"target-triplet": "x86_64-conda-linux-gnu"},
            some_unknown_key=[1, 2.5, None, True],
        ),
        {"lib/libgold.so.1": b"\x7fELF not really\n"},
        run_exports={"weak": ["libgold >=1.2.0,<1.3.0a0"]},
    )


def main() -> None:
    for folder in (CHANNEL, EXPECTED):
        if folder.exists():
            shutil.rmtree(folder)
    build_channel(CHANNEL)
    for subdir in ("noarch", "linux-64"):
        packages = spec.package_files(CHANNEL / subdir)
        out = EXPECTED / subdir
        out.mkdir(parents=True)
        (out / "repodata.json").write_bytes(spec.expected_repodata_bytes(subdir, packages))
        (out / "run_exports.json").write_bytes(spec.expected_run_exports_bytes(subdir, packages))


if __name__ == "__main__":
    main()
