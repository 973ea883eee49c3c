"""Inbox records of many jobs: records grouped by the inbox partition that owns their job and packed into batch
records of at most `max_jobs` items and `max_bytes` encoded. Bulk registration packs submissions into `SubmitJobs`
(the client's side); an executor packs one claim transaction's claims into `ClaimTasks`.

One inbox record for many jobs spares the streams worker the per-record cost of its consumer (fetching, the
stream, acknowledging), about a fifth of its time while it registers jobs one record each (a profile of the
worker); each job is still decided, stored and logged on its own (`streams.shell.InboxShell._batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ksched.errors import JobSpecError
from ksched.partitioning import partition_for
from ksched.schemas.events import SubmitJob, SubmitJobs
from ksched.topics import MAX_RECORD_BYTES

#: Submissions per record by default: past a few hundred the worker gains nothing more, and a record is decided
#: as a whole (its commit waits for all of it).
DEFAULT_MAX_JOBS = 200


@dataclass(frozen=True)
class BulkRecord:
    partition: int
    key: bytes  # the first job's id: a forwarder that routes by key sends it to the same partition
    value: bytes
    jobs: int


T = TypeVar("T")


def bulk_records(cmds: Iterable[SubmitJob], partitions: int, encode: Callable[[SubmitJobs], bytes],
                 max_jobs: int = DEFAULT_MAX_JOBS, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[BulkRecord]:
    """The records to produce, partition by partition, in the submissions' order within each partition. A record
    over `max_bytes` is split in two; a single submission over it is an error (the inbox would refuse it)."""
    return packed(cmds, partitions, lambda cmd: cmd.job.job_id, lambda p, chunk: encode(SubmitJobs(p, chunk)),
                  max_jobs, max_bytes)


def packed(items: Iterable[T], partitions: int, job_of: Callable[[T], str], pack: Callable[[int, list[T]], bytes],
           max_jobs: int, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[BulkRecord]:
    """`items` grouped by the inbox partition of their job (`job_of`) and packed by `pack(partition, chunk)` into
    records of at most `max_jobs` items, partition by partition, in the items' order within each. A record over
    `max_bytes` is split in two; a single item over it is an error (the inbox would refuse it)."""
    by_partition: dict[int, list[T]] = {}
    for item in items:
        by_partition.setdefault(partition_for(job_of(item), partitions), []).append(item)
    for partition, group in sorted(by_partition.items()):
        for start in range(0, len(group), max(1, max_jobs)):
            yield from _fit(partition, group[start:start + max(1, max_jobs)], job_of, pack, max_bytes)


def _fit(partition: int, chunk: list[T], job_of: Callable[[T], str], pack: Callable[[int, list[T]], bytes],
         max_bytes: int) -> Iterator[BulkRecord]:
    value = pack(partition, chunk)
    if len(value) <= max_bytes:
        yield BulkRecord(partition, job_of(chunk[0]).encode(), value, len(chunk))
    elif len(chunk) == 1:
        raise JobSpecError("job", f"{job_of(chunk[0])}: encoded, it is {len(value)} bytes; the inbox takes at "
                                  f"most {max_bytes}")
    else:
        half = len(chunk) // 2
        yield from _fit(partition, chunk[:half], job_of, pack, max_bytes)
        yield from _fit(partition, chunk[half:], job_of, pack, max_bytes)
