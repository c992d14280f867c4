"""The LRP engine's own exception (it imports nothing from the rest of strokelens)."""

from __future__ import annotations


class ExplainError(ValueError):
    """A method, rule, target, filter or model the engine cannot explain; the message names the fix."""
