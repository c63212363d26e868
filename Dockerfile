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
# The engine's int8 kernels are compiled here, into the cache, with a compiler that leaves the
# image with this layer (explicit instruction sets: the image runs on other CPUs than it was
# built on; each CPU picks its variant at run time).
RUN pip install --no-deps . && mkdir -p /app/var/spool /var/cache/tollgate \
    && apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ \
    && python -m engine.kernels \
    && apt-get purge -y -qq g++ && apt-get autoremove -y -qq && rm -rf /var/lib/apt/lists/* \
    && chown -R tollgate /app/var /var/cache/tollgate

# Installed non-editable, so the default config is read from here (TOLLGATE_CONFIG).
COPY config ./config

USER tollgate
EXPOSE 8080
CMD ["tollgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
