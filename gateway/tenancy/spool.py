"""A durable local spool of settlements made while Redis was unreachable.

Each replica appends to its own segment file (one JSON line per settlement, fsynced, so an
acknowledged line survives a crash). Replay closes the open segment, settles every line of every
closed segment through the idempotent settle script (so a line replayed twice is billed once),
then deletes the segment. Segments of dead processes are adopted and replayed too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from gateway.tenancy.models import Admission, UsageRecord

_OPEN = ".open"
_READY = ".ready"


class Spool:
    """This replica's spool directory: append while Redis is down, replay when it is back."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._segment: Path | None = None
        self._serial = 0
        # Appends run in a worker thread; sealing must never rename a segment mid-write.
        self._lock = threading.Lock()

    def append(self, admission: Admission, usage: UsageRecord) -> None:
        """Write one settlement durably (blocking: only ever called during an outage)."""
        with self._lock:
            self._append(admission, usage)

    def _append(self, admission: Admission, usage: UsageRecord) -> None:
        if self._segment is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._serial += 1
            self._segment = self.directory / f"spool-{os.getpid()}-{self._serial}{_OPEN}"
        line = orjson.dumps({"admission": asdict(admission), "usage": asdict(usage)}) + b"\n"
        fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> bool:
        """Whether anything waits to be replayed (ours or a dead replica's)."""
        return self._segment is not None or bool(self._closed_segments())

    def close_segment(self) -> None:
        """Seal the open segment so new outage writes go to a fresh one."""
        with self._lock:
            if self._segment is not None:
                self._segment.rename(self._segment.with_suffix(_READY))
                self._segment = None
        for orphan in self.directory.glob(f"spool-*{_OPEN}"):
            if not _alive(orphan):
                orphan.rename(orphan.with_suffix(_READY))

    def segments(self) -> list[Path]:
        """Sealed segments, oldest first."""
        return self._closed_segments()

    def _closed_segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"spool-*{_READY}"), key=lambda p: p.stat().st_mtime)


def read_segment(segment: Path) -> Iterator[tuple[Admission, UsageRecord]]:
    """The settlements in a segment; a torn last line (crash mid-write) is skipped."""
    try:
        data = segment.read_bytes()
    except FileNotFoundError:  # another replica replayed it first
        return
    for line in data.splitlines():
        try:
            entry: dict[str, Any] = orjson.loads(line)
            yield Admission(**entry["admission"]), UsageRecord(**entry["usage"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue


def _alive(segment: Path) -> bool:
    try:
        pid = int(segment.name.split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
