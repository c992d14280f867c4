"""``mlflow run . -e explain`` / ``python -m mlproject.explain``: explain a trained model, tracked in MLflow.

One nested MLflow run per method × filter carries its parameters and the metrics averaged over
cases; per case and method (unfiltered relevance) a relevance NIfTI on the native grid with the
case's affine (one volume per modality) and a PNG of relevance over a modality slice with the
lesion contour are logged as artifacts. The parent run keeps ``explanations.csv`` (the means) and
``cases.csv`` (every case's metrics per method × filter, with the nested run's id).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.data.cases import discover, read_case
from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.data.nifti import write_volume
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.errors import ParameterError
from benchmark.figures import lesion_slice, relevance_png
from benchmark.training.loop import load_model
from benchmark.training.search import split_cases
from explain.assessment import explain_case
from explain.attribution import methods as all_methods
from explain.filters import parse_filters
from mlproject._cli import ArgumentParser, add_experiment_argument, experiment_of, run, split_list
from tracking import runs as tracking

DEFAULT_METHODS = "all"


def parse_args(argv: Sequence[str] | None = None):
    """One flag per MLproject parameter."""
    parser = ArgumentParser(prog="python -m mlproject.explain", description=__doc__)
    parser.add_argument("--model", default="", help="run id, runs:/…, models:/name@alias, or a .pt checkpoint "
                        "(default: the best trial of the latest search)")
    parser.add_argument("--data", default="", help=f"data folder (default: the synthetic default, {DEFAULT_DATA})")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list or all: {', '.join(all_methods())}")
    parser.add_argument("--filters", default="raw", help="comma list: raw, pass_A_B, clamp_A_B, post_…, study_sweep")
    parser.add_argument("--cases", default="2", help="how many validation cases, or a comma list of case ids")
    add_experiment_argument(parser)
    parser.add_argument("--heavy", default="raw", choices=["raw", "all", "none"],
                        help="where to run faithfulness and randomisation (many forward passes)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def parse_methods(text: str) -> list[str]:
    """Comma list or ``all`` → method names, or a ParameterError naming the unknown one."""
    names = all_methods() if text.strip() in ("", "all") else split_list(text)
    unknown = [n for n in names if n not in all_methods()]
    if unknown:
        raise ParameterError(f"method '{unknown[0]}' is unknown: choose from {', '.join(all_methods())}")
    return names


def _cases(data: Path, spec: str, config: PreprocessConfig):
    refs = discover(data, config.modalities, split="train", with_evidence=True)
    if spec.strip().isdigit():
        count = int(spec)
        if count < 1:
            raise ParameterError(f"cases must be at least 1 (got {count})")
        _, val = split_cases(refs, seed=0)  # the search's validation cases
        chosen = (val + [r for r in refs if r not in val])[:count]
    else:
        wanted = split_list(spec)
        by_id = {r.case_id: r for r in refs}
        missing = [c for c in wanted if c not in by_id]
        if missing:
            raise ParameterError(f"case '{missing[0]}' is not a labelled case of '{data}'")
        chosen = [by_id[c] for c in wanted]
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Validate everything, then explain and log."""
    from tqdm import tqdm

    args = parse_args(argv)
    names = parse_methods(args.methods)
    filters = parse_filters(split_list(args.filters))
    experiment = experiment_of(args)
    tracking.setup(experiment)
    checkpoint, preprocess, model_run = tracking.resolve_model(args.model, experiment)
    config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
    data = Path(args.data) if args.data else ensure_default_data(DEFAULT_DATA)[0]
    refs = _cases(data, args.cases, config)
    model = load_model(checkpoint)
    cases = [(read_case(r), r) for r in refs]
    prepared = [prepare(case, config) for case, _ in cases]
    params = {"model": args.model or (model_run or str(checkpoint)), "model_run": model_run or "",
              "data": str(data), "cases": ",".join(r.case_id for r in refs), "heavy": args.heavy}
    results: dict[tuple[str, str], list] = {}
    with tempfile.TemporaryDirectory() as tmp, tracking.explain_run(model_run, params) as parent:
        folder = Path(tmp)
        jobs = [(method, p) for method in names for p in prepared]
        for method, p in tqdm(jobs, desc="explaining", unit="case"):
            lesion = p.label > 0.5
            explanations = explain_case(model, p.image, lesion, p.evidence, config.modalities, method, filters,
                                        case_id=p.case_id, heavy=args.heavy, seed=args.seed)
            for e in explanations:
                results.setdefault((method, e.filter.name), []).append(e)
        table, per_case = [], []
        for (method, filter_name), explanations in results.items():
            f = explanations[0].filter
            run_params = {"method": method, "filter": filter_name, "filter_kind": f.kind, "filter_mode": f.mode,
                          "filter_low": f.low, "filter_high": f.high, "cases": len(explanations),
                          "model_run": model_run or ""}
            with tracking.explanation_run(method, filter_name, run_params) as child:
                keys = sorted(set().union(*(e.metrics for e in explanations)))
                means = {k: float(np.nanmean([e.metrics.get(k, np.nan) for e in explanations])) for k in keys}
                tracking.log_summary(means)
                if f.kind == "raw":
                    tracking.log_artifacts(_case_outputs(folder / method, explanations, cases, prepared, config),
                                           "relevance")
                table.append({"run_id": child.info.run_id, "method": method, "filter": filter_name, **means})
                per_case += [{"run_id": child.info.run_id, "method": method, "filter": filter_name,
                              "case": e.case_id, **e.metrics} for e in explanations]
        summary = folder / "explanations.csv"
        import pandas as pd

        pd.DataFrame(table).to_csv(summary, index=False)
        tracking.log_artifacts([summary], "")
        tracking.log_cases(per_case)
        print(f"explained {len(cases)} cases with {len(names)} methods and {len(filters)} filters: "
              f"{len(table)} runs under MLflow run {parent.info.run_id}")
        best = max((row for row in table if "evidence_mass_accuracy" in row and row["filter"] == "raw"),
                   key=lambda row: row["evidence_mass_accuracy"], default=None)
        if best is not None:
            print(f"best evidence mass accuracy without a filter: {best['evidence_mass_accuracy']:.3f} "
                  f"({best['method']}; the report ranks every method × filter)")
    return 0


def _case_outputs(folder: Path, explanations, cases, prepared, config: PreprocessConfig) -> list[Path]:
    """Per case: relevance NIfTI on the native grid (one volume per modality) and a PNG."""
    by_id = {p.case_id: (case, p) for (case, _), p in zip(cases, prepared)}
    paths = []
    for e in explanations:
        case, p = by_id[e.case_id]
        native = to_native(e.relevance, case.shape)  # (C, D, H, W)
        paths.append(write_volume(folder / f"{e.case_id}_{e.method}.nii.gz", np.moveaxis(native, 0, -1),
                                  case.affine, dtype=np.float32))
        z = lesion_slice(p.label > 0.5)
        channel = list(config.modalities).index("Tmax") if "Tmax" in config.modalities else 0
        paths.append(relevance_png(folder / f"{e.case_id}_{e.method}.png", p.image[channel, z],
                                   e.relevance.sum(axis=0)[z], p.label[z] > 0.5,
                                   f"{e.case_id} · {e.method} · slice {z}\nrelevance (sum over modalities) "
                                   f"on {config.modalities[channel]}, lesion green"))
    return paths


if __name__ == "__main__":
    sys.exit(run(main))
