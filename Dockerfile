# Tollgate: the gateway (and, with another config, the embedded engine as its own server).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOLLGATE_CONFIG=/app/config/tollgate.yaml \
    TOLLGATE_CACHE_DIR=/var/cache/tollgate

WORKDIR /app
RUN useradd --system --uid 10001 --home-dir /app tollgate

# Dependencies first, from pyproject.toml alone, so editing code does not reinstall them:
# this layer is rebuilt only when the pinned dependencies change.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY gateway ./gateway
COPY adapters ./adapters
COPY engine ./engine
COPY bench ./bench
RUN pip install --no-deps . && mkdir -p /app/var/spool /var/cache/tollgate \
    && chown -R tollgate /app/var /var/cache/tollgate

# Installed non-editable, so the default config is read from here (TOLLGATE_CONFIG).
COPY config ./config

USER tollgate
EXPOSE 8080
CMD ["tollgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
