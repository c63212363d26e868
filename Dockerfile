# Tollgate: the gateway (and, with another config, the embedded engine as its own server).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOLLGATE_CONFIG=/app/config/tollgate.yaml \
    TOLLGATE_CACHE_DIR=/var/cache/tollgate

WORKDIR /app
RUN useradd --system --uid 10001 --home-dir /app tollgate

# Dependencies first, so editing code does not reinstall them.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY engine ./engine
COPY bench ./bench
RUN pip install . && mkdir -p /app/var/spool /var/cache/tollgate \
    && chown -R tollgate /app/var /var/cache/tollgate

# Installed non-editable, so the default config is read from here (TOLLGATE_CONFIG).
COPY config ./config

USER tollgate
EXPOSE 8080
CMD ["tollgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
