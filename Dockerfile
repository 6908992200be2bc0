# conda-indexd as a sidecar: watches the channel volume, publishes repodata and shards.
# Build: docker build -t conda-indexd .   Run: see deploy/docker-compose.yml and README.

# --- build: the package and its dependencies in a venv, copied whole into the runtime ---
# One image for every mode: a channel folder, an s3:// bucket (the s3 extra: boto3) and
# --db postgresql, a single daemon or a pair (the postgresql extra: psycopg 3's binary
# wheel, which bundles libpq). The two extras add 40 MB (docs/deployment.md).
# (No wheels are copied into the runtime stage and deleted there: a file removed in a later
# layer still weighs in the image. Both stages use the same base image, so the venv's
# interpreter link, /opt/conda-indexd/bin/python -> the base's python3, stays valid.)
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/conda-indexd \
    && /opt/conda-indexd/bin/pip install --no-cache-dir '.[s3,postgresql]' \
    && /opt/conda-indexd/bin/pip uninstall --yes --quiet pip setuptools

# --- runtime ---
FROM python:3.11-slim-bookworm
# tini's upstream version is pinned, its Debian revision is not: bookworm rebuilds
# (0.19.0-1+b3 -> +b4) and security uploads change only the revision, and apt refuses a
# revision that is no longer in the archive.
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'tini=0.19.0*' \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 conda-indexd \
    && useradd --system --uid 10001 --gid conda-indexd --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin conda-indexd \
    && mkdir -p /channel/noarch /channel/linux-64 /channel/linux-aarch64 /channel/osx-64 /channel/osx-arm64 /channel/win-64 \
    && mkdir -p /var/lib/conda-indexd \
    && chown -R conda-indexd:conda-indexd /channel /var/lib/conda-indexd
COPY --from=build /opt/conda-indexd /opt/conda-indexd

# Inside the container the HTTP listener (metrics, /healthz, /readyz) must be reachable
# from other containers; outside a container the default stays 127.0.0.1. An s3://
# channel keeps its cache.db under $XDG_STATE_HOME/conda-indexd/BUCKET/PREFIX (the user
# has no home): mount a volume on /var/lib/conda-indexd to keep it across restarts.
ENV CONDA_INDEXD_LISTEN=0.0.0.0:8650 \
    XDG_STATE_HOME=/var/lib/conda-indexd \
    PATH=/opt/conda-indexd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/channel"]
EXPOSE 8650
USER 10001:10001
# tini as PID 1 forwards signals and reaps; the daemon finishes the publish in progress
# on SIGTERM and exits 0.
STOPSIGNAL SIGTERM
# The slim image has no curl: ask /healthz with Python. The start period covers the
# start-up reconcile of a big channel (READY is /readyz; health is the threads alive).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8650/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "conda-indexd"]
CMD ["watch", "/channel", "--log-format", "json"]
