# tufnotary-server image. Alone it serves with SQLite in /data; docker-compose.yml adds PostgreSQL.
# It also ships the Kubernetes admission webhook: `tufnotary-admission serve` (deploy/kubernetes/).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY metadata ./metadata
COPY server ./server
COPY client ./client
COPY admission ./admission
COPY migrations ./migrations
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /data tufnotary \
    && install -d -o tufnotary -m 0700 /data

USER tufnotary
WORKDIR /data
VOLUME /data
EXPOSE 4443
CMD ["tufnotary-server", "serve", "--listen", "0.0.0.0:4443", "--data-dir", "/data"]
