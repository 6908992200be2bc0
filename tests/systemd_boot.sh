#!/bin/bash
# Run by tests/test_systemd.py under `unshare --mount --pid --fork --uts --ipc --net
# --cgroup --propagation private --mount-proc` (ops-notes "systemd"). Sets up a machine
# the way README's systemd steps do, in private mounts only, then execs systemd as PID 1.
# Nothing outside the namespaces changes: /srv, /opt, /etc, /run, /tmp and /var/log are private.
set -euo pipefail
REPO=$1 WHEELS=$2 PKGS=$3 WORK=$4

# the channel folder the unit names (ReadWritePaths=/srv/conda/channel)
mount -t tmpfs tmpfs /srv
mkdir -p /srv/conda/channel/noarch
cp "$PKGS"/* /srv/conda/channel/noarch/
# and two channels for the template unit's instances (README "Several channels on one host")
mkdir -p /srv/conda/main/noarch /srv/conda/dev/noarch
# the package, installed as the README says: a venv in /opt/conda-indexd
mount -t tmpfs tmpfs /opt
/usr/bin/python3 -m venv /opt/conda-indexd
env $(env | grep -o '^PIP_[A-Z_]*' | sed 's/^/-u /') PIP_CONFIG_FILE=/dev/null \
    /opt/conda-indexd/bin/pip install -q --no-index --find-links "$WHEELS" conda-indexd
# a private copy of /etc: the static user, the environment file
rm -rf "$WORK/etc"; cp -a /etc "$WORK/etc"; mount --bind "$WORK/etc" /etc
systemd-sysusers "$REPO/systemd/conda-indexd.sysusers"
chown -R conda-indexd:conda-indexd /srv/conda/channel /srv/conda/main /srv/conda/dev
mkdir -p /etc/conda-indexd && cp "$REPO/systemd/conda-indexd.env" /etc/conda-indexd/
for instance in main:8651 dev:8652; do
    sed "s/^CONDA_INDEXD_LISTEN=.*/CONDA_INDEXD_LISTEN=127.0.0.1:${instance#*:}/" \
        "$REPO/systemd/conda-indexd-instance.env" > "/etc/conda-indexd/${instance%:*}.env"
done
# the unit, verbatim, plus a drop-in shortening the watchdog for the test
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system/conda-indexd.service.d
cp "$REPO/systemd/conda-indexd.service" "$REPO/systemd/conda-indexd@.service" /run/systemd/system/
printf '[Service]\nWatchdogSec=4\n' > /run/systemd/system/conda-indexd.service.d/test.conf
mount -t tmpfs tmpfs /tmp
# journald keeps its files in /run (volatile), not in the host's /var/log/journal
mount -t tmpfs tmpfs /var/log
exec /lib/systemd/systemd --system --unit=basic.target
