# tusserver image: the server's wheel (web UI included) with the s3 and postgres extras,
# installed in a slim image and running as an unprivileged user.
#
#   docker build -t tusserver .
#   docker run -p 127.0.0.1:1080:1080 -v tusserver-data:/data tusserver
#
# Configure with TUSSERVER_* environment variables (docs/configuration.md) or a TOML file
# mounted into the container and named by TUSSERVER_CONFIG.

# --- web assets: the UI's npm packages (Uppy, Chart.js) from package-lock.json -------------
FROM node:20-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --omit=optional --no-audit --no-fund

# --- build: the wheel, with the web UI's bundles inside it (setup.py copies them) ----------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN pip install build
WORKDIR /src
COPY . .
COPY --from=assets /assets/node_modules ./node_modules
RUN python -m build --wheel --outdir /wheels .

# --- runtime ------------------------------------------------------------------------------
FROM python:3.11-slim

# libmagic1: file type detection (python-magic) for the file pipeline.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 tusserver \
    && useradd --system --uid 10001 --gid tusserver --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tusserver \
    && mkdir /data \
    && chown tusserver:tusserver /data

# The wheel and its dependencies (s3 and postgres extras); nothing of the build stays.
COPY --from=build /wheels /tmp/wheels
RUN python -m venv /opt/tusserver \
    && /opt/tusserver/bin/pip install --no-cache-dir --disable-pip-version-check \
        "$(ls /tmp/wheels/tusserver-*.whl)[s3,postgres]" \
    && rm -rf /tmp/wheels

ENV PATH=/opt/tusserver/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TUSSERVER_DATA_DIR=/data \
    TUSSERVER_HOST=0.0.0.0

USER tusserver
WORKDIR /data
VOLUME /data
EXPOSE 1080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:1080/healthz', timeout=4).status == 200 else 1)"]

CMD ["tusserver", "serve"]
