"""Bulk registration on the client's side: submissions grouped by the inbox partition that owns their job and
packed into `SubmitJobs` records of at most `max_jobs` submissions and `max_bytes` encoded.

One inbox record for many jobs spares the streams worker the per-record cost of its consumer (fetching, the
stream, acknowledging), about a fifth of its time while it registers jobs one record each (a profile of the
worker); each job is still decided, stored and logged on its own (`streams.shell.InboxShell._submissions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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


def bulk_records(cmds: Iterable[SubmitJob], partitions: int, encode: Callable[[SubmitJobs], bytes],
                 max_jobs: int = DEFAULT_MAX_JOBS, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[BulkRecord]:
    """The records to produce, partition by partition, in the submissions' order within each partition. A record
    over `max_bytes` is split in two; a single submission over it is an error (the inbox would refuse it)."""
    by_partition: dict[int, list[SubmitJob]] = {}
    for cmd in cmds:
        by_partition.setdefault(partition_for(cmd.job.job_id, partitions), []).append(cmd)
    for partition, group in sorted(by_partition.items()):
        for start in range(0, len(group), max(1, max_jobs)):
            yield from _fit(partition, group[start:start + max(1, max_jobs)], encode, max_bytes)


def _fit(partition: int, chunk: list[SubmitJob], encode: Callable[[SubmitJobs], bytes],
         max_bytes: int) -> Iterator[BulkRecord]:
    value = encode(SubmitJobs(partition, chunk))
    if len(value) <= max_bytes:
        yield BulkRecord(partition, chunk[0].job.job_id.encode(), value, len(chunk))
    elif len(chunk) == 1:
        raise JobSpecError("job", f"{chunk[0].job.job_id}: encoded, it is {len(value)} bytes; the inbox takes at "
                                  f"most {max_bytes}")
    else:
        half = len(chunk) // 2
        yield from _fit(partition, chunk[:half], encode, max_bytes)
        yield from _fit(partition, chunk[half:], encode, max_bytes)
