"""API key secrets: how they are made, hashed and recognised.

A secret is ``tg-`` followed by 192 random bits (url-safe base64). Only its SHA-256 is stored:
the secret has full entropy, so a fast hash is as safe as a slow one and keeps lookups cheap.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets

SECRET_PREFIX = "tg-"
_SECRET_BYTES = 24  # 192 bits, above the 128 the design asks for
_SHOWN_CHARS = 10  # how much of the secret listings show


def new_secret() -> str:
    """A fresh bearer secret, shown to the operator once and never stored."""
    return SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The hex SHA-256 under which a secret is stored and looked up."""
    return hashlib.sha256(secret.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    """The recognisable start of a secret for listings (not enough to guess the rest)."""
    return secret[:_SHOWN_CHARS]


def new_key_id() -> str:
    """A public key id, safe to log and put in spans."""
    return "key_" + secrets.token_hex(8)


# Ids on the request path come from a per-process random prefix and a counter: unique across
# replicas and restarts (64 random bits per process) without reading the OS's randomness on
# every request. A forked worker draws its own prefix.
_id_prefix = secrets.token_hex(8)
_id_counter = itertools.count()


def _reseed_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_reseed_ids)


def unique_hex() -> str:
    """32 hex digits no other call in any process returns (ids, not secrets)."""
    return f"{_id_prefix}{next(_id_counter):016x}"


def new_request_id() -> str:
    """A server-generated request id: the ledger's idempotency key within a tenant."""
    return "req_" + unique_hex()


def looks_like_secret(value: str) -> bool:
    """Cheap shape check, so malformed bearer tokens never reach the store."""
    return value.startswith(SECRET_PREFIX) and 16 <= len(value) <= 128
