"""Shared kernel of ksched: settings, ids, events, topics and the local dev broker.

Everything here is used by more than one of `streams`, `executor` and `cli`.
"""

__version__ = "0.1.0"
