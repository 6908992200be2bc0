"""Attestation sidecars (docs/attestations.md; rattler PR #2773, the ceps#142 draft):
`<package>.sigs` with its immutable copy `<package>.sigs.<sha256>` is advertised as the
record's `attestations_sha256` in every output; a bad or missing pair leaves the record
without it, with a reason in the log and the metrics; sidecars are never packages;
the daemon picks up sidecars added, replaced and removed later (folder and bucket); and
py-rattler 0.28 reads the field."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

import pkgfactory as f
from conftest import run_index
from daemonproc import DaemonProcess, all_records, repodata, shard_records, wait_for

FIELD = "attestations_sha256"


def bundle(i: int = 0) -> dict[str, Any]:
    """Something shaped like a Sigstore bundle (the indexer does not verify signatures)."""
    return {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"i": i}, "dsseEnvelope": {}}


def sigs_bytes(*bundles: dict[str, Any]) -> bytes:
    return json.dumps(list(bundles or (bundle(),)), indent=1).encode()


def attest(pkg: Path, data: bytes | None = None, *, copy: bytes | None | bool = True) -> str:
    """Write `pkg.sigs` and (copy=True) its immutable copy; `copy` bytes: other bytes under
    the copy's name; copy=False: no copy. Returns the sha256 of the .sigs bytes."""
    data = sigs_bytes() if data is None else data
    sha = hashlib.sha256(data).hexdigest()
    if copy is not False:
        copy_path = pkg.parent / f"{pkg.name}.sigs.{sha}"
        tmp = copy_path.with_name("." + copy_path.name + ".part")
        tmp.write_bytes(data if copy is True else copy)  # type: ignore[arg-type]
        os.replace(tmp, copy_path)
    tmp = pkg.parent / f".{pkg.name}.sigs.part"
    tmp.write_bytes(data)
    os.replace(tmp, pkg.parent / f"{pkg.name}.sigs")  # an atomic replace, as an upload tool would
    return sha


def make(folder: Path, name: str, version: str = "1.0", ext: str = ".conda") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-0{ext}"
    maker = f.make_conda if ext == ".conda" else f.make_tar_bz2
    maker(path, f.index_json(name, version, "0", folder.name), {f"share/{name}/{version}": os.urandom(16)})
    return path


def records(folder: Path, name: str = "repodata.json") -> dict[str, dict[str, Any]]:
    return all_records(json.loads((folder / name).read_bytes()))


def advertised(folder: Path, name: str = "repodata.json") -> dict[str, str]:
    return {fn: r[FIELD] for fn, r in records(folder, name).items() if FIELD in r}


def refusals(result: Any) -> dict[str, str]:
    """{sidecar path: reason} of the run's refusal warnings."""
    return {r["path"]: r["reason"] for r in result.events("attestation sidecar refused; the package is published without it")}


# --- the pure rules ------------------------------------------------------------------------


def test_sidecar_names() -> None:
    from conda_indexd.names import sidecar_of

    sha = "a" * 64
    assert sidecar_of("foo-1.0-0.conda.sigs") == ("foo-1.0-0.conda", None)
    assert sidecar_of("foo-1.0-0.tar.bz2.sigs") == ("foo-1.0-0.tar.bz2", None)
    assert sidecar_of(f"foo-1.0-0.conda.sigs.{sha}") == ("foo-1.0-0.conda", sha)
    for name in ("foo.sigs", f"foo-1.0-0.conda.sigs.{'A' * 64}", "foo-1.0-0.conda.sigs.abc", ".foo-1.0-0.conda.sigs",
                 "foo-1.0-0.conda.sigs.part", f"foo-1.0-0.conda.sigs.{sha}.tmp", "foo-1.0-0.conda"):  # fmt: skip
        assert sidecar_of(name) is None, name


def test_check_verdicts() -> None:
    from conda_indexd.formats import attestations as a

    good = sigs_bytes()
    assert a.check(good, good) == a.Verdict(hashlib.sha256(good).hexdigest())
    assert a.check(b"\xff\xfe[]", None).reason == a.NOT_JSON
    assert a.check(b"[" * 100_000, None).reason == a.NOT_JSON  # nested past the parser's limit
    assert a.check(b"null", None).reason == a.NOT_ARRAY
    assert a.check(b"[{}, 1]", None).reason == a.NOT_OBJECTS
    assert a.check(good, None).reason == a.NO_COPY
    assert a.check(good, good + b" ").reason == a.COPY_DIFFERS
    assert a.check(b" " * (a.CAP + 1), None).reason == a.TOO_LARGE
    assert all("\n" not in a.check(bad, None).detail for bad in (b"[{", b"{}", b"[]"))


def test_patches_apply_the_field_to_that_file_only() -> None:
    from conda_indexd.formats import attestations, patches

    doc = {"packages": {"t-1-0.tar.bz2": {"name": "t"}}, "packages.conda": {"t-1-0.conda": {"name": "t"}}}
    instructions = attestations.layer({"t-1-0.tar.bz2": "b" * 64}, {"packages": {"t-1-0.tar.bz2": {"license": "MIT"}}})
    ops = patches.per_record(instructions)
    assert ops["t-1-0.tar.bz2"][-1] == ("merge", {FIELD: "b" * 64})
    assert ("merge", {FIELD: "b" * 64}) not in ops["t-1-0.conda"]
    patches.apply(doc, instructions)
    assert doc["packages"]["t-1-0.tar.bz2"] == {"name": "t", "license": "MIT", FIELD: "b" * 64}
    assert doc["packages.conda"]["t-1-0.conda"] == {"name": "t", "license": "MIT"}
    assert attestations.strip(instructions)[0] == {"packages": {"t-1-0.tar.bz2": {"license": "MIT"}}}


# --- conda-indexd index on a folder --------------------------------------------------------


def test_index_advertises_a_good_pair_everywhere(channel: Path) -> None:
    noarch = channel / "noarch"
    good = make(noarch, "good")
    tar = make(noarch, "tarred", ext=".tar.bz2")
    twin_tar = make(noarch, "twin", ext=".tar.bz2")  # only the .tar.bz2 of a twin pair is attested
    make(noarch, "twin")
    plain = make(noarch, "plain")
    sha = attest(good)
    tar_sha = attest(tar, sigs_bytes(bundle(1), bundle(2)))
    twin_sha = attest(twin_tar, sigs_bytes(bundle(3)))
    result = run_index(channel, "--current-repodata")
    expected = {good.name: sha, tar.name: tar_sha, twin_tar.name: twin_sha}
    assert advertised(noarch) == expected
    # only that very file: the .conda twin of an attested .tar.bz2 is not
    assert FIELD not in records(noarch)["twin-1.0-0.conda"]
    assert FIELD not in records(noarch)[plain.name]
    # the shards and current_repodata say the same
    assert {fn: r[FIELD] for fn, r in shard_records(noarch).items() if FIELD in r} == expected
    current = records(noarch, "current_repodata.json")
    # (current_repodata keeps the .conda of a twin pair, as conda-index does)
    assert {fn: r[FIELD] for fn, r in current.items() if FIELD in r} == {good.name: sha, tar.name: tar_sha}
    assert "twin-1.0-0.conda" in current and FIELD not in current["twin-1.0-0.conda"]
    # sidecars are never packages: not counted, not skipped, no warning about them
    assert result.subdir("noarch")["packages"] == 5
    assert result.skipped == []
    assert refusals(result) == {}
    assert not [r for r in result.records if r.get("level") == "warning"], result
    # the field sorts into place, compact like every other key
    assert b'"attestations_sha256":"%s","build"' % sha.encode() in (noarch / "repodata.json").read_bytes()
    # a second run changes nothing and the sidecars are all still there
    before = {p.name: p.read_bytes() for p in noarch.iterdir() if p.is_file()}
    again = run_index(channel, "--current-repodata")
    assert {p.name: p.read_bytes() for p in noarch.iterdir() if p.is_file()} == before
    # ... and is a no-op run: nothing rebuilt for sidecars that did not change
    assert again.subdir("noarch")["written"] == [] and again.subdir("noarch")["shards_encoded"] == 0, again
    # CEP-48's v3 section (every record there with --repodata-next) and its shards say the same
    run_index(channel, "--repodata-next")
    v3 = json.loads((noarch / "repodata.json").read_bytes())["v3"]
    assert {stem: r[FIELD] for stem, r in v3["conda"].items() if FIELD in r} == {"good-1.0-0": sha}
    assert {stem: r[FIELD] for stem, r in v3["tar.bz2"].items() if FIELD in r} == {"tarred-1.0-0": tar_sha, "twin-1.0-0": twin_sha}
    assert {fn: r[FIELD] for fn, r in shard_records(noarch).items() if FIELD in r} == expected


def test_index_refuses_bad_pairs_with_a_reason(channel: Path) -> None:
    noarch = channel / "noarch"
    cases = {
        "badjson": (b"[{not json", True, "not-json"),
        "object": (b'{"a": 1}', True, "not-array"),
        "empty": (b"[]", True, "empty-array"),
        "strings": (b'["a", "b"]', True, "not-objects"),
        "nocopy": (sigs_bytes(), False, "missing-copy"),
        "mismatch": (sigs_bytes(), b'[{"other": 1}]', "copy-differs"),
        "huge": (b"[" + b" " * (1 << 20) + b"{}]", True, "too-large"),
    }
    pkgs = {name: make(noarch, name) for name in cases}
    good = make(noarch, "good")
    for name, (data, copy, _) in cases.items():
        attest(pkgs[name], data, copy=copy)
    sha = attest(good)
    result = run_index(channel)
    assert advertised(noarch) == {good.name: sha}
    assert refusals(result) == {f"{pkgs[n].name}.sigs": reason for n, (_, _, reason) in cases.items()}
    # every package still published, none skipped
    assert result.subdir("noarch")["packages"] == len(cases) + 1
    assert result.skipped == []
    for line in result.events("attestation sidecar refused; the package is published without it"):
        assert line["level"] == "warning" and line["subdir"] == "noarch" and "\n" not in line["detail"]
    assert "Traceback" not in result.stdout + result.stderr


def test_sidecars_of_missing_packages_and_stray_copies_are_quiet(channel: Path) -> None:
    noarch = channel / "noarch"
    make(noarch, "real")
    (noarch / "gone-1.0-0.conda.sigs").write_bytes(sigs_bytes())  # its package is not there
    (noarch / f"real-1.0-0.conda.sigs.{'0' * 64}").write_bytes(b"[]")  # an old immutable copy
    result = run_index(channel)
    assert advertised(noarch) == {}
    assert result.subdir("noarch")["packages"] == 1 and result.skipped == []
    assert not [r for r in result.records if r.get("level") == "warning"], result
    assert (noarch / "gone-1.0-0.conda.sigs").exists() and (noarch / f"real-1.0-0.conda.sigs.{'0' * 64}").exists()


def test_index_follows_a_sidecar_added_replaced_and_removed(channel: Path) -> None:
    noarch = channel / "noarch"
    pkg = make(noarch, "later")
    run_index(channel)
    assert advertised(noarch) == {}
    sha = attest(pkg)
    run_index(channel)
    assert advertised(noarch) == {pkg.name: sha}
    sha2 = attest(pkg, sigs_bytes(bundle(1), bundle(2)))  # appended attestations: a new copy, the alias replaced
    assert sha2 != sha
    run_index(channel)
    assert advertised(noarch) == {pkg.name: sha2}
    assert advertised(noarch, "repodata_from_packages.json") == {}  # what the tarballs say (docs/attestations.md)
    (noarch / f"{pkg.name}.sigs").unlink()
    run_index(channel)
    assert advertised(noarch) == {}
    assert FIELD not in shard_records(noarch)[pkg.name]


def test_patches_cannot_set_or_remove_the_field(channel: Path) -> None:
    noarch = channel / "noarch"
    pkg = make(noarch, "patched")
    other = make(noarch, "other")
    sha = attest(pkg)
    instructions = {
        "patch_instructions_version": 1,
        "packages": {},
        "packages.conda": {pkg.name: {FIELD: None, "license": "MIT"}, other.name: {FIELD: "f" * 64}},
    }
    (noarch / "patch_instructions.json").write_text(json.dumps(instructions))
    result = run_index(channel)
    assert advertised(noarch) == {pkg.name: sha}
    assert records(noarch)[pkg.name]["license"] == "MIT"
    assert [r for r in result.records if "attestations_sha256" in r.get("event", "")]


def test_rattler_reads_the_field(channel: Path, tmp_path: Path) -> None:
    rattler = pytest.importorskip("rattler")
    noarch = channel / "noarch"
    pkg = make(noarch, "signed")
    make(noarch, "unsigned")
    sha = attest(pkg)
    run_index(channel)
    gateway = rattler.Gateway(cache_dir=tmp_path / "cache")
    found = asyncio.run(rattler.solve([channel.as_uri()], ["signed", "unsigned"], gateway=gateway, platforms=["noarch"]))
    by_name = {r.name.normalized: r for r in found}
    assert by_name["signed"].attestations_sha256 == bytes.fromhex(sha)
    assert by_name["unsigned"].attestations_sha256 is None


# --- the daemon on a folder ----------------------------------------------------------------


def test_daemon_follows_sidecars_on_a_folder(channel: Path) -> None:
    noarch = channel / "noarch"
    pkg = make(noarch, "live")
    other = make(noarch, "bystander")
    with DaemonProcess(channel) as d:
        wait_for(lambda: pkg.name in all_records(repodata(channel, "noarch")), 30, what="the package")
        assert advertised(noarch) == {}
        bystander = records(noarch)[other.name]
        # added later
        sha = attest(pkg)
        wait_for(lambda: advertised(noarch) == {pkg.name: sha}, 30, what="the field")
        assert records(noarch)[other.name] == bystander  # only that record changes
        wait_for(lambda: shard_records(noarch)[pkg.name].get(FIELD) == sha, 30, what="the shard")
        wait_for(lambda: d.metric("conda_indexd_attested_packages", subdir="noarch") == 1, 30, what="the metric")
        # replaced: a new copy first, then the alias
        sha2 = attest(pkg, sigs_bytes(bundle(1), bundle(2)))
        wait_for(lambda: advertised(noarch) == {pkg.name: sha2}, 30, what="the new hash")
        # replaced by something bad: the field goes, with a reason and a metric
        (noarch / f"{pkg.name}.sigs").write_bytes(b"[]")
        wait_for(lambda: advertised(noarch) == {}, 30, what="the field gone")
        wait_for(lambda: d.metric("conda_indexd_attestation_sidecars_refused", subdir="noarch", reason="empty-array") == 1, 30, what="the metric")
        assert "empty-array" in d.log_text()
        # good again, then removed
        attest(pkg, sigs_bytes(bundle(1), bundle(2)))
        wait_for(lambda: advertised(noarch) == {pkg.name: sha2}, 30, what="the hash back")
        wait_for(lambda: d.metric("conda_indexd_attestation_sidecars_refused", subdir="noarch", reason="empty-array") == 0, 30, what="the metric")
        (noarch / f"{pkg.name}.sigs").unlink()
        wait_for(lambda: advertised(noarch) == {}, 30, what="the field gone")
        wait_for(lambda: FIELD not in shard_records(noarch)[pkg.name], 30, what="the shard")
        assert records(noarch)[other.name] == bystander
        # the .sigs before its copy: refused until the copy arrives, then advertised
        data = sigs_bytes(bundle(9))
        (noarch / f"{pkg.name}.sigs").write_bytes(data)
        wait_for(lambda: d.metric("conda_indexd_attestation_sidecars_refused", subdir="noarch", reason="missing-copy") == 1, 30, what="refused")
        (noarch / f"{pkg.name}.sigs.{hashlib.sha256(data).hexdigest()}").write_bytes(data)
        wait_for(lambda: advertised(noarch) == {pkg.name: hashlib.sha256(data).hexdigest()}, 30, what="the copy's arrival")
        (noarch / f"{pkg.name}.sigs").unlink()
        wait_for(lambda: advertised(noarch) == {}, 30, what="the field gone")
        # a package arriving after its sidecar
        late = noarch / "late-1.0-0.conda"
        late_sha = attest(late)
        make(noarch, "late")
        wait_for(lambda: advertised(noarch) == {late.name: late_sha}, 30, what="the late package's field")
        wait_for(lambda: d.metric("conda_indexd_packages", subdir="noarch") == 3, 30, what="the package count")
        assert "Traceback" not in d.log_text()


# --- a bucket (the session's Ceph RGW; skips without it) ------------------------------------


def s3_put_sidecar(s3: Any, bucket: str, key: str, data: bytes, *, copy: bool = True) -> str:
    """As `rattler upload s3` does: the immutable copy first, then a server-side copy of it
    to the mutable `.sigs` (copy=False: only the `.sigs`)."""
    sha = hashlib.sha256(data).hexdigest()
    if not copy:
        s3.put_object(Bucket=bucket, Key=f"{key}.sigs", Body=data)
        return sha
    s3.put_object(Bucket=bucket, Key=f"{key}.sigs.{sha}", Body=data)
    s3.copy_object(Bucket=bucket, Key=f"{key}.sigs", CopySource={"Bucket": bucket, "Key": f"{key}.sigs.{sha}"})
    return sha


def s3_advertised(s3: Any, bucket: str, subdir: str = "noarch") -> dict[str, str]:
    from test_s3 import records as s3_records

    return {fn: r[FIELD] for fn, r in s3_records(s3, bucket, f"chan/{subdir}/repodata.json").items() if FIELD in r}


def test_index_s3_advertises_and_refuses(tmp_path: Path, s3: Any, bucket: str) -> None:
    good, nocopy, later = (make(tmp_path / "noarch", n) for n in ("good", "nocopy", "later"))
    for p in (good, nocopy, later):
        s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
    sha = s3_put_sidecar(s3, bucket, f"chan/noarch/{good.name}", sigs_bytes())
    s3_put_sidecar(s3, bucket, f"chan/noarch/{nocopy.name}", sigs_bytes(), copy=False)
    state = tmp_path / "state"
    result = run_index(f"s3://{bucket}/chan", "--cache-dir", state)  # type: ignore[arg-type]
    assert s3_advertised(s3, bucket) == {good.name: sha}
    assert refusals(result) == {f"{nocopy.name}.sigs": "missing-copy"}
    assert result.subdir("noarch")["packages"] == 3 and result.skipped == []
    # a sidecar added later, one replaced, one removed: the next run follows
    later_sha = s3_put_sidecar(s3, bucket, f"chan/noarch/{later.name}", sigs_bytes(bundle(7)))
    new_sha = s3_put_sidecar(s3, bucket, f"chan/noarch/{good.name}", sigs_bytes(bundle(1), bundle(2)))
    run_index(f"s3://{bucket}/chan", "--cache-dir", state)  # type: ignore[arg-type]
    assert s3_advertised(s3, bucket) == {good.name: new_sha, later.name: later_sha}
    s3.delete_object(Bucket=bucket, Key=f"chan/noarch/{good.name}.sigs")
    run_index(f"s3://{bucket}/chan", "--cache-dir", state)  # type: ignore[arg-type]
    assert s3_advertised(s3, bucket) == {later.name: later_sha}
    # nothing of ours removed a sidecar or an old immutable copy
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="chan/noarch/")["Contents"]}
    assert {f"chan/noarch/{good.name}.sigs.{sha}", f"chan/noarch/{good.name}.sigs.{new_sha}", f"chan/noarch/{nocopy.name}.sigs"} <= keys


@pytest.mark.parametrize("intake", ["events", "polling"])
def test_daemon_follows_sidecars_in_a_bucket(tmp_path: Path, rgw: Any, s3: Any, bucket: str, intake: str) -> None:
    from daemonproc import free_port
    from test_s3 import s3_daemon, subscribe

    if intake == "events":
        port = free_port()
        subscribe(rgw, s3, bucket, port)
        daemon = s3_daemon(tmp_path, bucket, port=port)
    else:
        daemon = s3_daemon(tmp_path, bucket, "--polling", "--poll-interval", "0.5")
    pkg = make(tmp_path / "noarch", "live")
    s3.upload_file(str(pkg), bucket, f"chan/noarch/{pkg.name}")
    key = f"chan/noarch/{pkg.name}"
    with daemon.start():
        wait_for(
            lambda: (
                s3_advertised(s3, bucket) == {}
                and pkg.name in json.loads(s3.get_object(Bucket=bucket, Key="chan/noarch/repodata.json")["Body"].read())["packages.conda"]
            ),
            30,
            what="the package",
        )
        sha = s3_put_sidecar(s3, bucket, key, sigs_bytes())
        wait_for(lambda: s3_advertised(s3, bucket) == {pkg.name: sha}, 30, what="the field")
        sha2 = s3_put_sidecar(s3, bucket, key, sigs_bytes(bundle(1), bundle(2)))
        wait_for(lambda: s3_advertised(s3, bucket) == {pkg.name: sha2}, 30, what="the new hash")
        s3.delete_object(Bucket=bucket, Key=f"{key}.sigs")
        wait_for(lambda: s3_advertised(s3, bucket) == {}, 30, what="the field gone")
        assert "Traceback" not in daemon.log_text()


def test_nginx_serves_the_copy_immutable_and_the_sidecar_revalidated(tmp_path: Path) -> None:
    from nginxproc import Nginx, nginx_binary

    nginx_binary()  # skips without nginx
    channel = tmp_path / "channel"
    pkg = make(channel / "noarch", "served")
    sha = attest(pkg)
    with Nginx(channel, tmp_path / "nginx") as server:
        status, headers, body = server.request("GET", f"/noarch/{pkg.name}.sigs.{sha}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha
        assert headers["content-type"] == "application/json" and "immutable" in headers["cache-control"]
        status, headers, body = server.request("GET", f"/noarch/{pkg.name}.sigs")
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha
        assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-cache"
        status, headers, _ = server.request("GET", f"/noarch/{pkg.name}")
        assert status == 200 and "immutable" in headers["cache-control"]


def test_a_change_while_nothing_ran_is_seen_by_the_next_start(channel: Path) -> None:
    """The saved memo and the no-op shortcut (unchanged package listing, unchanged outputs)
    do not hide a sidecar replaced or removed while no daemon ran."""
    noarch = channel / "noarch"
    pkg, other = make(noarch, "kept"), make(noarch, "dropped")
    attest(pkg)
    attest(other)
    run_index(channel)
    sha2 = attest(pkg, sigs_bytes(bundle(5)))
    (noarch / f"{other.name}.sigs").unlink()
    with DaemonProcess(channel):
        wait_for(lambda: advertised(noarch) == {pkg.name: sha2}, 30, what="the start-up run")


def test_odd_files_under_sidecar_names_are_not_read(channel: Path) -> None:
    """A FIFO or a symlink under a sidecar's name is never opened (a FIFO would block the
    run); a folder named like one is no sidecar either."""
    noarch = channel / "noarch"
    fifo_pkg, link_pkg, dir_pkg = make(noarch, "fifo"), make(noarch, "link"), make(noarch, "dir")
    data = sigs_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (noarch / f"{fifo_pkg.name}.sigs").write_bytes(data)
    os.mkfifo(noarch / f"{fifo_pkg.name}.sigs.{sha}")
    secret = channel.parent / "secret.json"
    secret.write_bytes(data)
    (noarch / f"{link_pkg.name}.sigs").symlink_to(secret)
    (noarch / f"{link_pkg.name}.sigs.{sha}").write_bytes(data)
    (noarch / f"{dir_pkg.name}.sigs").mkdir()
    result = run_index(channel, timeout=120)
    assert advertised(noarch) == {}
    assert refusals(result) == {f"{fifo_pkg.name}.sigs": "missing-copy"}
    assert result.subdir("noarch")["packages"] == 3 and result.skipped == []
