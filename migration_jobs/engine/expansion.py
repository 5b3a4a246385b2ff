"""Expanded size of an archive's gzip members, capped while they stream.

A gzip member can expand ~1000 times (a "zip bomb"); what an archive expands to is what a
restore writes into the database. Two limits, checked while reading (a member is never
expanded whole, in memory or on disk):
- per member, TENANT_ARCHIVE_MAX_EXPANSION_RATIO (default 300) times its compressed size,
  or 64 MiB, whichever is more. Archives are written at gzip level 3, whose deflate cannot
  pass ~230:1 even on identical bytes (measured 229:1 for zeros; real COPY data 2-8:1), so
  300 never refuses an archive this code wrote; only level 4+ reaches gzip's ~1030:1.
- per archive, TENANT_ARCHIVE_MAX_EXPANDED_BYTES in all (default 64 GiB): what one restore
  may write; raise it for bigger tenants.
"""
from __future__ import annotations

from django.conf import settings

from migration_jobs.engine.archive import CHUNK
from migration_jobs.exceptions import ArchiveError

MIN_EXPANSION_ALLOWANCE = 64 << 20


def expansion_limits() -> tuple[int, int]:
    """(TENANT_ARCHIVE_MAX_EXPANDED_BYTES, TENANT_ARCHIVE_MAX_EXPANSION_RATIO) from settings."""
    return (int(getattr(settings, "TENANT_ARCHIVE_MAX_EXPANDED_BYTES", 64 << 30)),
            int(getattr(settings, "TENANT_ARCHIVE_MAX_EXPANSION_RATIO", 300)))


class ExpansionCap:
    """The expanded-size budget of one archive read (validate_archive, or one restore)."""

    def __init__(self):
        self.total_limit, self.ratio = expansion_limits()
        self.total = 0

    def reader(self, gz, name: str, compressed_bytes: int) -> "CappedReader":
        return CappedReader(gz, self, name, max(self.ratio * int(compressed_bytes), MIN_EXPANSION_ALLOWANCE))


class CappedReader:
    """Reads a gzip stream, refusing (ArchiveError) as soon as the member expands past its own
    limit or the archive past its total limit."""

    def __init__(self, gz, cap: ExpansionCap, name: str, limit: int):
        self.gz, self.cap, self.name, self.limit, self.size = gz, cap, name, limit, 0

    def read(self, n: int = CHUNK) -> bytes:
        if n is None or n < 0:
            n = CHUNK  # never "all of it"
        # Never ask for more than one byte past what is allowed: a bomb is never expanded
        # further than the limit, whatever the caller asked for.
        allowed = min(self.limit - self.size, self.cap.total_limit - self.cap.total) + 1
        data = self.gz.read(max(1, min(n, allowed)))
        self.size += len(data)
        self.cap.total += len(data)
        if self.size > self.limit:
            raise ArchiveError(f"{self.name} expands past {self.limit} bytes ({self.cap.ratio} times its compressed "
                               f"size; TENANT_ARCHIVE_MAX_EXPANSION_RATIO): refused as a decompression bomb")
        if self.cap.total > self.cap.total_limit:
            raise ArchiveError(f"the archive expands past {self.cap.total_limit} bytes "
                               f"(TENANT_ARCHIVE_MAX_EXPANDED_BYTES) at {self.name}: refused")
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.gz.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
