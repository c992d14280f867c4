"""The leaderboard tables as people read them: column headings, rounded numbers, row order and row styles.

:mod:`~benchmark.reporting.leaderboard` builds the tables with full precision; this module turns
them into display tables of strings (``mean ± sd``, thousands separators, ``–`` where a value is
unknown) that the HTML and Markdown templates lay out, and says which rows are highlighted
(``rule``: a clinical threshold rule; ``floor``: the random floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.evaluation.robustness import NOISE_SIGMA, ZERO_FRACTION
from benchmark.reporting.leaderboard import key_metrics

HEADERS = {
    "rank": "rank", "name": "model / rule", "kind": "kind", "dice": "Dice", "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)", "lesion_f1": "lesion F1", "volume_diff_ml": "|ΔV| (ml)",
    "dice_noise": f"Dice, noise σ={NOISE_SIGMA}", "dice_zero_half": f"Dice, {ZERO_FRACTION:.0%} voxels zeroed",
    "params": "parameters", "epochs": "epochs trained",
    "dice_ci": "Dice 95 % CI", "p_vs_best": "vs best: Holm p", "train_s": "training (s)",
    "latency_torch_s": "PyTorch latency (s)",
    "latency_onnx_s": "onnxruntime latency (s)", "trials": "trials", "pruned": "pruned", "failed": "failed",
    "source": "numbers from", "run_id": "MLflow run", "method": "method", "filter": "filter", "mode": "filter at",
    "rank_score": "mean rank", "architecture": "architecture", "evidence_rank_accuracy": "evidence rank acc.",
    "retained_relevance": "retained |R|", "aopc_morf": "AOPC MoRF", "aopc_lerf": "AOPC LeRF",
    "evidence_mass_accuracy": "evidence mass acc.",
    "relevance_mass_accuracy": "relevance mass acc.", "relevance_rank_accuracy": "relevance rank acc.",
    "blrp_to_ot": "bLRPtoOT", "blrp_to_bx": "bLRPtobx", "pointing_game": "pointing game",
    "modality_attribution_accuracy": "modality attribution acc.", "sparseness": "sparseness (Gini)",
    "faithfulness": "faithfulness (MoRF−LeRF)", "randomisation_spearman": "randomisation ρ (lower better)",
    "conservation_error": "conservation error", "seconds_per_volume": "s / volume", "above_floor": "above floor",
}
"""The heading of each column (and the axis or colour-bar label of each metric in the figures)."""

TEXT_COLUMNS = frozenset({"name", "kind", "method", "filter", "mode", "source", "run_id", "architecture"})
"""Columns of words, left-aligned; the others hold numbers, right-aligned."""


@dataclass
class DisplayTable:
    """One table of the report: display strings, one style class per row (``""``, ``"rule"`` or ``"floor"``).

    Attributes:
        title: the sub-heading above the table (empty for none).
        columns: the column keys (see :data:`HEADERS`).
        rows: ``(row class, cell strings)`` in rank order.
    """

    title: str
    columns: list[str]
    rows: list[tuple[str, list[str]]]

    @property
    def headers(self) -> list[str]:
        return [HEADERS.get(c, c) for c in self.columns]


def number(value, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` (integers and values ≥ 1000 with thousands separators; ``–`` if unknown)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _mean_sd(means, sds, digits: int = 3) -> list[str]:
    """``mean ± sd`` per row (the mean alone where the sd is unknown)."""
    return [number(m, digits) + ("" if not math.isfinite(s) else f" ± {number(s, digits)}")
            for m, s in zip(means, sds)]


def _counts(values) -> list[str]:
    """Whole numbers with thousands separators, ``–`` where unknown."""
    return [number(int(v)) if math.isfinite(v) else "–" for v in values]


def _display(title: str, shown: pd.DataFrame, row_classes: list[str]) -> DisplayTable:
    rows = [(cls, [str(v) for v in values]) for cls, values in zip(row_classes, shown.itertuples(index=False))]
    return DisplayTable(title, list(shown.columns), rows)


def architecture_display(table: pd.DataFrame) -> DisplayTable:
    """The architecture leaderboard (networks and clinical rules, ranked); clinical-rule rows have class ``rule``."""
    out = pd.DataFrame({"rank": table["rank"], "name": table["name"], "kind": table["kind"]})
    for key in ("dice", "hd95", "assd", "lesion_f1", "volume_diff_ml", "dice_noise", "dice_zero_half"):
        digits = 1 if key in ("hd95", "assd", "volume_diff_ml") else 3
        out[key] = _mean_sd(table[f"{key}_mean"], table[f"{key}_sd"], digits)
    at = out.columns.get_loc("dice") + 1
    out.insert(at, "dice_ci", [f"[{number(lo)}, {number(hi)}]" if math.isfinite(lo) else "–"
                               for lo, hi in zip(table["dice_ci_low"], table["dice_ci_high"])])
    out.insert(at + 1, "p_vs_best", [_versus_best(p, tied) for p, tied in zip(table["p_vs_best"],
                                                                               table["tied_with_best"])])
    out["params"] = _counts(table["params"])
    out["epochs"] = _counts(table["epochs"])
    out["train_s"] = [number(v, 0) for v in table["train_s"]]
    for key in ("latency_torch_s", "latency_onnx_s"):
        out[key] = [number(v, 3) for v in table[key]]
    for key in ("trials", "pruned", "failed"):
        out[key] = _counts(table[key])
    out["source"] = table["source"]
    out["run_id"] = table["run_id"]
    return _display("", out, ["rule" if k == "clinical rule" else "" for k in table["kind"]])


def _versus_best(p: float, tied: float) -> str:
    """``0.031 (differs)`` / ``0.41 (tied)`` for a Holm-corrected p-value against the best row, ``–`` if untested."""
    if not math.isfinite(p):
        return "–"
    return f"{number(p)} ({'tied' if tied else 'differs'})"


def _explanation_strings(table: pd.DataFrame) -> pd.DataFrame:
    leading = ("rank", "architecture", "method", "filter", "mode", "kind", "rank_score")
    metrics = [c for c in HEADERS if c in table.columns and c not in (*leading, "run_id")]
    shown = [c for c in leading if c in table.columns] + metrics + ["run_id"]
    out = table[shown].copy()
    primary = key_metrics(table.columns)[0]
    for column in out.columns:
        if column in ("rank", "architecture", "method", "filter", "mode", "kind", "run_id"):
            continue
        if column == primary and f"{primary}_sd" in table:
            out[column] = _mean_sd(table[primary], table[f"{primary}_sd"])
        elif column == "above_floor":
            out[column] = ["–" if isinstance(v, float) else ("yes" if v else "no") for v in table[column]]
        else:
            out[column] = [number(v, 2 if column == "rank_score" else 3) for v in table[column]]
    return out


def explanation_displays(table: pd.DataFrame) -> list[DisplayTable]:
    """The first (best) architecture's unfiltered methods and every method × filter, then the other architectures.

    Floor and reference rows have class ``floor``.
    """
    first = table["architecture"].iloc[0] if "architecture" in table else ""
    own = table[table["architecture"] == first] if first else table
    rest = table[table["architecture"] != first] if first else table[:0]
    raw = own[own["mode"] == "raw"].reset_index(drop=True)
    where = f"{first}: " if first else ""
    sections = []
    if len(raw) and len(raw) < len(own):
        sections.append((f"{where}methods, unfiltered (rank among all its method × filter rows)", raw))
    sections.append((f"{where}every method × filter ({len(own)} rows)", own))
    if len(rest):
        sections.append((f"The other architectures' best trials, ranked within each ({len(rest)} rows)", rest))
    return [_display(title, _explanation_strings(part), ["floor" if k in ("floor", "reference") else ""
                                                         for k in part["kind"]])
            for title, part in sections]
