"""The tracking layer's own exception (it imports nothing from the benchmark stages)."""

from __future__ import annotations


class TrackingError(Exception):
    """An MLflow store, run or model reference that cannot be used; the message names the fix."""
