"""`conda-indexd demo [DIR]`: a small channel of real packages, indexed and watched.

The packages are generated here (conda_indexd.pkgbuild), so the demo needs nothing but
`pip install`: noarch and linux-64, with dependencies between them, in both formats.
`conda-indexd demo --add DIR` drops one more package in (the next `demo-plugin`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conda_indexd.demo.pkgbuild import conda_bytes, index_json, package_filename, tar_bz2_bytes
from conda_indexd.errors import IndexdError

MARKER = ".conda-indexd-demo"  # a dotfile: ignored by the indexer, says the folder is a demo
PLUGIN = "demo-plugin"
SETTLED = 5.0  # seconds the generated packages are back-dated


class DemoError(IndexdError):
    """A demo folder that cannot be used: one line, exit 2."""


@dataclass(frozen=True)
class DemoPackage:
    subdir: str
    name: str
    version: str
    build: str
    ext: str
    depends: tuple[str, ...]
    summary: str
    files: tuple[tuple[str, str], ...]  # (path, text)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}{self.ext}"


def _script(text: str) -> str:
    return f"#!/bin/sh\necho {shlex.quote(text)}\n"


PACKAGES = (
    DemoPackage("noarch", "demo-data", "1.0", "0", ".tar.bz2", (), "Greeting texts (old format, older version)",
                (("share/demo-data/greeting.txt", "hello\n"),)),
    DemoPackage("noarch", "demo-data", "1.1", "0", ".conda", (), "Greeting texts",
                (("share/demo-data/greeting.txt", "hello, conda\n"),)),
    DemoPackage("noarch", "demo-greet", "1.0", "0", ".conda", ("demo-data >=1.1",), "Prints the greeting",
                (("bin/demo-greet", _script("hello from demo-greet")),)),
    DemoPackage("linux-64", "libdemo", "1.0", "h0_0", ".conda", (), "A (pretend) shared library",
                (("lib/libdemo.txt", "libdemo 1.0\n"),)),
    DemoPackage("linux-64", "demo-app", "1.0", "h0_0", ".conda", ("libdemo >=1.0,<2", "demo-greet"),
                "An application using libdemo and demo-greet", (("bin/demo-app", _script("hello from demo-app")),)),
)  # fmt: skip


def _plugin(number: int) -> DemoPackage:
    return DemoPackage("noarch", PLUGIN, f"{number}.0", "0", ".conda", ("demo-greet",),
                       f"Plugin number {number}, added with `conda-indexd demo --add`",
                       ((f"share/{PLUGIN}/{number}.txt", f"plugin {number}\n"),))  # fmt: skip


def archive(pkg: DemoPackage, timestamp_ms: int) -> bytes:
    """The package's bytes: index.json, about.json, paths.json, info/files and its files."""
    files = {path: text.encode() for path, text in pkg.files}
    index = index_json(pkg.name, pkg.version, pkg.build, pkg.subdir, depends=list(pkg.depends), timestamp=timestamp_ms)
    if pkg.subdir == "noarch":
        index["noarch"] = "generic"
    paths = {
        "paths": [{"_path": p, "path_type": "hardlink", "sha256": hashlib.sha256(d).hexdigest(), "size_in_bytes": len(d)} for p, d in sorted(files.items())],
        "paths_version": 1,
    }
    about: dict[str, Any] = {"summary": pkg.summary, "license": "BSD-3-Clause", "home": "https://example.invalid/conda-indexd-demo"}
    info = {**files, "info/files": "".join(p + "\n" for p in sorted(files)).encode()}
    if pkg.ext == ".conda":
        return conda_bytes(pkg.filename, index, info, about=about, paths_json=paths)
    return tar_bz2_bytes(index, info, about=about, paths_json=paths)


def _place(folder: Path, filename: str, data: bytes) -> Path:
    """Write under a dot-temp name, then rename: the daemon only ever sees whole files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    tmp = folder / f".{filename}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def prepare(channel: Path) -> list[Path]:
    """Make `channel` a demo channel (created if missing); returns the packages written.

    Refuses a folder that has content and is not a demo channel made here before."""
    if channel.exists() and not channel.is_dir():
        raise DemoError(f"demo folder is not a folder: {channel}")
    if channel.is_dir() and any(channel.iterdir()) and not (channel / MARKER).exists():
        raise DemoError(f"{channel} is not empty and not a demo channel; give the demo a new folder")
    channel.mkdir(parents=True, exist_ok=True)
    (channel / MARKER).write_text("made by `conda-indexd demo`; delete the folder when done\n")
    now = time.time()
    written = []
    for pkg in PACKAGES:
        if not (channel / pkg.subdir / pkg.filename).exists():
            path = _place(channel / pkg.subdir, pkg.filename, archive(pkg, int(now * 1000)))
            # complete files: dated before the daemon's --settle window, so its start-up
            # index publishes them at once rather than a moment after ready
            os.utime(path, (now - SETTLED, now - SETTLED))
            written.append(path)
    return written


def add(channel: Path) -> Path:
    """Add the next demo-plugin package to a demo channel's noarch; returns its path."""
    if not (channel / MARKER).exists():
        raise DemoError(f"{channel} is not a demo channel (run `conda-indexd demo {channel}` first)")
    pattern = re.compile(rf"^{PLUGIN}-(\d+)\.0-0\.conda$")
    taken = [int(m.group(1)) for f in os.listdir(channel / "noarch") if (m := pattern.match(f))] if (channel / "noarch").is_dir() else []
    pkg = _plugin(max(taken, default=0) + 1)
    return _place(channel / pkg.subdir, pkg.filename, archive(pkg, int(time.time() * 1000)))


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def banner(channel: Path, host: str, port: int) -> str:
    """What the demo prints once the channel is indexed."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    file_url = channel.as_uri()
    check = (f"python -c \"import json; d = json.load(open('{channel / 'noarch' / 'repodata.json'}')); "
             "print(sorted(d['packages']) + sorted(d['packages.conda']))\"")  # fmt: skip
    http = f"http://127.0.0.1:8000/{channel.name}"
    return f"""
conda-indexd demo: {channel} is indexed and watched.

  Status page:  {url}/   (as JSON: {url}/status.json, metrics: {url}/metrics)

  Add a package, in a second terminal (this one runs the daemon):
      conda-indexd demo --add {_q(channel)}
  It shows up within about a second on the status page and in repodata.json:
      {check}

  Point a client at the channel (the daemon writes the index; file:// or any web server serves it):
      conda search --override-channels -c {file_url} demo-greet
      mamba search --override-channels -c {file_url} demo-greet
      pixi search --channel {file_url} demo-greet
      conda create -n demo --override-channels -c {file_url} demo-app    # linux-64
  Or over HTTP, served under a path so that conda names the channel ({channel.name}):
      python -m http.server --bind 127.0.0.1 --directory {_q(channel.parent)} 8000
      conda search --override-channels -c {http} demo-greet
  With shards (the default), a bare `conda search` fails in conda itself: name a package,
  use `conda search '**'`, or add --no-repodata-use-shards.

  Stop with Ctrl-C. The folder stays; delete it when done.
"""


def package_names() -> list[str]:
    """The filenames the demo writes (for tests and the README)."""
    return [package_filename({"name": p.name, "version": p.version, "build": p.build}, p.ext) for p in PACKAGES]
