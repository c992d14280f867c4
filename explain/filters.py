"""Relevance filters (the study's): keep or clip normalised relevance inside an interval.

For relevance ``R`` of one sample, ``r = R / max|R|`` lies in [−1, 1]. With an interval
[a, b] ⊆ [0, 1] applied to positive values and its mirror [−b, −a] to negative ones:

* ``pass``: keep ``r`` where ``a ≤ |r| ≤ b``, zero elsewhere;
* ``clamp``: ``sign(r) · clip(|r|, a, b)`` where ``r ≠ 0`` (zeros stay zero);
* ``raw``: no filter.

The result is multiplied by ``max|R|`` again, so units are kept. A filter runs either after
every layer during propagation (``layer``, as the study did) or once on the input relevance
(``post``). Names: ``raw``, ``pass_0_0.05``, ``clamp_0.1_1``; ``post_`` in front selects post-hoc.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explain.errors import ExplainError

Tensor = torch.Tensor
MODES = ("layer", "post")


@dataclass(frozen=True)
class RelevanceFilter:
    """A pass or clamp filter on [low, high] (and its mirror), or ``raw``, in a mode.

    Attributes:
        kind: ``pass``, ``clamp`` or ``raw``.
        low: a, in [0, 1].
        high: b, in [0, 1], larger than a.
        mode: ``layer`` (after every layer) or ``post`` (once at the input).
    """

    kind: str = "raw"
    low: float = 0.0
    high: float = 1.0
    mode: str = "layer"

    def __post_init__(self):
        if self.kind not in ("pass", "clamp", "raw"):
            raise ExplainError(f"filter kind '{self.kind}' is unknown: use pass, clamp or raw")
        if not (0.0 <= self.low < self.high <= 1.0):
            raise ExplainError(f"filter interval [{self.low}, {self.high}] must lie within [0, 1] with "
                                 "low < high, e.g. pass_0_0.2")
        if self.mode not in MODES:
            raise ExplainError(f"filter mode '{self.mode}' is unknown: use layer or post")

    @property
    def name(self) -> str:
        """The name used on the command line: raw, pass_0_0.05, post_clamp_0_0.2."""
        core = "raw" if self.kind == "raw" else f"{self.kind}_{self.low:g}_{self.high:g}"
        return core if self.mode == "layer" or self.kind == "raw" else f"post_{core}"

    def __call__(self, relevance: Tensor) -> Tensor:
        """Filter a (N, …) relevance tensor sample by sample.

        Computed in the relevance's own units (``a ≤ |r|`` is ``a·max|R| ≤ |R|``), so kept values
        are returned unchanged rather than divided and multiplied back.
        """
        if self.kind == "raw":
            return relevance
        dims = tuple(range(1, relevance.dim()))
        scale = torch.linalg.vector_norm(relevance, ord=float("inf"), dim=dims, keepdim=True)
        low, high = self.low * scale, self.high * scale
        if self.kind == "clamp":
            if self.low == 0:
                return relevance.clamp(-high, high)
            magnitude = relevance.abs().clamp(low, high)
            return torch.where(relevance == 0, relevance, magnitude.copysign(relevance))
        magnitude = relevance.abs()
        if self.low == 0:
            keep = magnitude <= high
        elif self.high == 1:
            keep = magnitude >= low
        else:
            keep = (magnitude >= low) & (magnitude <= high)
        return relevance * keep


STUDY_PASS = [(0, .05), (0, .1), (0, .2), (0, .4), (0, .6), (.05, 1), (.1, 1), (.2, 1), (.4, 1), (.6, 1)]
STUDY_CLAMP = [(0, .05), (0, .1), (0, .2), (0, .4), (0, .6)]


def study_sweep(mode: str = "layer") -> list[RelevanceFilter]:
    """The study's sweep: raw, 10 pass and 5 clamp intervals."""
    return ([RelevanceFilter()] + [RelevanceFilter("pass", a, b, mode) for a, b in STUDY_PASS]
            + [RelevanceFilter("clamp", a, b, mode) for a, b in STUDY_CLAMP])


GRIDS = {"study_sweep": lambda: study_sweep("layer"), "study_sweep_post": lambda: study_sweep("post"),
         "study_pass": lambda: [RelevanceFilter("pass", a, b) for a, b in STUDY_PASS],
         "study_clamp": lambda: [RelevanceFilter("clamp", a, b) for a, b in STUDY_CLAMP]}


def parse_filter(name: str) -> RelevanceFilter:
    """``raw``, ``pass_0_0.05``, ``post_clamp_0_0.2`` → a :class:`RelevanceFilter`."""
    text = name.strip()
    mode = "layer"
    if text.startswith("post_"):
        mode, text = "post", text[len("post_"):]
    if text == "raw":
        return RelevanceFilter()
    parts = text.split("_")
    try:
        kind, low, high = parts[0], float(parts[1]), float(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (IndexError, ValueError):
        raise ExplainError(f"filter '{name}' is unknown: use raw, pass_A_B, clamp_A_B (0 <= A < B <= 1), "
                             f"a post_ prefix, or a grid: {', '.join(GRIDS)}") from None
    return RelevanceFilter(kind, low, high, mode)


def parse_filters(names: list[str]) -> list[RelevanceFilter]:
    """Filter names and grid names → unique filters in order."""
    out: list[RelevanceFilter] = []
    for name in names or ["raw"]:
        for f in (GRIDS[name]() if name in GRIDS else [parse_filter(name)]):
            if f not in out:
                out.append(f)
    return out
