# syntax=docker/dockerfile:1
#
# email-service image: one image, several roles chosen by the command
# (serve | worker | scheduler | migrate | token | rotate-keys).
#
#   docker build -t email-service:dev .
#   docker run --rm -p 5000:5000 email-service:dev            # API on :5000
#   docker run --rm -e REDIS_URL=... email-service:dev worker  # background jobs
#
# Configuration comes from the environment only; nothing secret is baked in.

# Pinned by tag (Python patch release + Debian release) so rebuilds are repeatable;
# bump it deliberately. Both stages use the same base so the venv's interpreter path
# (/usr/local/bin/python3.11) exists in the runtime stage.
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Every runtime dependency ships manylinux wheels (psycopg[binary], cryptography,
# uvloop, httptools, fast-mail-parser), so no compiler or -dev packages are needed.
# If one ever has to be built from source, add build-essential here, not below.
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# .dockerignore is an allow-list: only the packaging files and the packages arrive.
COPY . .
# A regular (non-editable) install: the wheel carries the package data
# (openapi/openapi.yaml, db/migrations), so /src is not needed at run time.
RUN pip install . \
    && find /opt/venv -type d -name __pycache__ -prune -exec rm -rf {} +


FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="email-service" \
      org.opencontainers.image.description="Multi-tenant REST API over IMAP/POP3 mail accounts" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed, high UID/GID (10001): outside the range of distro and host users, and the
# Kubernetes manifests pin runAsUser/runAsGroup/fsGroup to the same numbers
# (tests/deploy checks they agree), so keep them literal here.
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /var/lib/email-service

COPY --from=builder /opt/venv /opt/venv

# DATA_DIR holds the embedded blob store / SQLite when no S3 / PostgreSQL is
# configured; it is the only path the service writes to besides /tmp.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/var/lib/email-service

WORKDIR /var/lib/email-service
USER 10001:10001

EXPOSE 5000

# The slim image has no curl: use the interpreter that is already there.
# urlopen raises on a non-2xx answer (/health gives 503 when the DB or Redis is down),
# so any failure exits non-zero. Only meaningful for `serve`: compose disables it for
# the worker, scheduler and migrate containers; Kubernetes ignores HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

ENTRYPOINT ["email-service"]
CMD ["serve", "--host", "0.0.0.0", "--port", "5000"]
