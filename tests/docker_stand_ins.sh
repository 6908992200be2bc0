#!/bin/bash
# Stand-in base images for tests/test_docker.py (ops-notes "Docker"): no container registry
# is reachable here, so the FROM images of the Dockerfile and of deploy/docker-compose.yml
# are made from a Debian bookworm rootfs (debootstrap) and kept as tarballs that the test
# `docker import`s under the FROM name. Run by .ci/run; needs root and debootstrap.
#
#   tests/docker_stand_ins.sh [CACHE_DIR]     (default /var/cache/conda-indexd-ci)
#
# Each tarball is keyed by the image name and this script's recipe for it, so a changed
# FROM line or recipe builds a new one and an unchanged one is reused between runs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${1:-/var/cache/conda-indexd-ci}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$CACHE"

# the FROM names, read from the files that use them
python_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$REPO/Dockerfile" | sort -u)
nginx_image=$(sed -n 's/^ *image: *\(nginx[^ ]*\)/\1/p' "$REPO/deploy/docker-compose.yml")
[ "$(echo "$python_image" | wc -l)" = 1 ] || { echo "Dockerfile: expected one base image, got: $python_image" >&2; exit 1; }

# what the official images have that the test relies on
python_pkgs="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
nginx_pkgs="nginx-light,ca-certificates"

key() { printf '%s %s %s' "$1" "$2" "v2" | sha256sum | cut -c1-16; }

build() {  # build IMAGE PACKAGES SETUP-FUNCTION
    local image=$1 pkgs=$2 setup=$3 tarball
    tarball="$CACHE/stand-in-$(echo "$image" | tr ':/' '__')-$(key "$image" "$pkgs").tar"
    if [ -s "$tarball" ]; then
        echo "$image: cached $tarball"
        return
    fi
    local root
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' RETURN
    echo "$image: debootstrap bookworm ($pkgs)"
    debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    # this machine's extra CA certificates (egress proxy), or pip in a build fails with
    # CERTIFICATE_VERIFY_FAILED: a fact of this machine, not of the Dockerfile
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null
    fi
    # as Debian's official images (debian:bookworm-slim, which python:*-slim and nginx
    # build on): apt keeps no package caches in image layers, and no translations
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    "$setup" "$root"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar --numeric-owner -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    # older recipes of the same image are dead weight in the cache
    find "$CACHE" -maxdepth 1 -name "stand-in-$(echo "$image" | tr ':/' '__')-*.tar" ! -path "$tarball" -delete
    echo "$image: built $tarball ($(du -h "$tarball" | cut -f1))"
}

setup_python() {
    # the official image lets pip install as root without a venv
    rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED
}

setup_nginx() {
    # the official image: conf.d/*.conf only, logs on stdout/stderr
    rm -f "$1"/etc/nginx/sites-enabled/default
    ln -sf /dev/stdout "$1"/var/log/nginx/access.log
    ln -sf /dev/stderr "$1"/var/log/nginx/error.log
}

build "$python_image" "$python_pkgs" setup_python
build "$nginx_image" "$nginx_pkgs" setup_nginx
# the list the test reads: IMAGE TARBALL
{
    echo "$python_image $CACHE/stand-in-$(echo "$python_image" | tr ':/' '__')-$(key "$python_image" "$python_pkgs").tar"
    echo "$nginx_image $CACHE/stand-in-$(echo "$nginx_image" | tr ':/' '__')-$(key "$nginx_image" "$nginx_pkgs").tar"
} >"$CACHE/stand-ins.txt"
