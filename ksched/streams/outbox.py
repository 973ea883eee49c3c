"""The outbox's bookkeeping: which of a job's recorded outputs may still be unpublished.

Faust commits input offsets only after flushing the producers, so after a crash every input past the
committed offset is delivered again, but the state written for it may already be in the changelog while its
outputs were lost. Each job record keeps the outputs of the inputs it applied past the committed offset; when
a partition is assigned, those are published again. Entries below the committed offset, or whose outputs the
broker has acknowledged (`delivered`), are dropped the next time the job is written: waiting for the commit
alone let a busy job's outbox, and so every write of it, grow with everything it emitted in a commit interval.
"""

from __future__ import annotations

from .jobstore import Message, Outbox

#: Outbox entries kept per job when the committed offset is not known yet.
OUTBOX_FALLBACK = 64


def settled(committed: int | None, delivered: int | None) -> int | None:
    """The input offset below which every output is known to be out: committed, or delivered."""
    if delivered is None:
        return committed
    return delivered + 1 if committed is None else max(committed, delivered + 1)


def trim(outbox: Outbox, committed: int | None) -> Outbox:
    """The entries whose outputs may not have been flushed yet (at or after the committed offset)."""
    if committed is None:
        return list(outbox[-OUTBOX_FALLBACK:])
    return [entry for entry in outbox if entry[0] >= committed]  # the entries themselves: their JSON is cached


def record(outbox: Outbox, offset: int, outputs: list[Message], settled_offset: int | None) -> Outbox:
    """The outbox after the input at `offset` produced `outputs`."""
    kept = trim(outbox, settled_offset)
    if outputs:
        kept.append((offset, outputs))
    return kept


def unpublished(outbox: Outbox, replay_from: int) -> list[Message]:
    """The outputs of inputs at or after `replay_from` (where consumption restarts): publish them again."""
    return [m for offset, msgs in outbox if offset >= replay_from for m in msgs]
