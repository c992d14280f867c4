"""The plan stage: fingerprint a data set and write its ``plan.json`` for ``native`` preprocessing.

:func:`plan_data` is what ``python -m mlproject.plan`` runs; the rules are
:mod:`benchmark.data.planning`'s. A search in ``native`` mode without a plan makes one the same way
(:func:`benchmark.training.search.study_plan`) and keeps it beside the study's split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.data.planning import PLAN_FILE, Plan, make_plan


@dataclass
class PlanResult:
    """The plan and where it was written."""

    plan: Plan
    path: Path

    def lines(self) -> list[str]:
        """What the command line prints."""
        return self.plan.lines() + [f"plan written to {self.path}"]


def plan_data(data: str | Path = "", out: str | Path = PLAN_FILE, device: str = "cpu", architecture: str = "unet3d",
              width: float = 0.25, normalization: str = "robust", overlap: float = 0.5,
              progress: bool = True) -> PlanResult:
    """Fingerprint ``data`` (empty: the synthetic default, generated once) and write its plan to ``out``.

    Args:
        data: an ISLES 2017 or nnU-Net folder.
        out: the ``plan.json`` to write (atomically; an existing one is replaced).
        device: ``cpu`` or ``cuda``: the memory budget of the patch and batch size.
        architecture: the network the memory rule is computed for.
        width: its width (the widest a search will try).
        normalization: ``robust`` (z-score inside the brain) or ``minmax`` (the study's).
        overlap: least overlap of neighbouring sliding windows.
        progress: a progress bar over cases.

    Raises:
        DataError: no labelled case in ``data``. ParameterError: a bad device, normalisation or overlap.
    """
    if not data or Path(data) == DEFAULT_DATA:
        data, _ = ensure_default_data(DEFAULT_DATA)
    plan = make_plan(data, device=device, architecture=architecture, width=width, normalization=normalization,
                     overlap=overlap, progress=progress)
    return PlanResult(plan, plan.save(out))
