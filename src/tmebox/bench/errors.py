"""Errors of the evaluation harness (the CLI prints them as one line)."""

from __future__ import annotations

from tmebox.errors import TmeboxError


class BenchError(TmeboxError):
    """A benchmark could not be built, run or checked."""


class FetchError(BenchError):
    """A workload's source package could not be fetched or failed its hash check."""
