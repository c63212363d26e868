"""Ids and secrets made by ``gateway.tenancy.keys``."""

from __future__ import annotations

import os

from gateway.tenancy import keys


def test_request_ids_are_unique_and_shaped() -> None:
    ids = [keys.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("req_") and len(i) == 36 for i in ids)
    int(ids[0][4:], 16)  # hex after the prefix


def test_a_forked_process_draws_its_own_id_prefix() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, keys.unique_hex().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = keys.unique_hex()
    assert len(child) == len(parent) == 32
    assert child[:16] != parent[:16]


def test_secrets_have_the_prefix_and_enough_randomness() -> None:
    secret = keys.new_secret()
    assert keys.looks_like_secret(secret)
    assert len(secret) - len(keys.SECRET_PREFIX) >= 22  # >= 128 bits in urlsafe base64
