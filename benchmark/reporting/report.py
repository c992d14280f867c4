"""The leaderboard report of a study: HTML (one self-contained file), Markdown, CSV tables and PNGs.

``<out>/<study>/``:

* ``leaderboard.html``: every table and figure, images embedded as data URIs, no scripts, no
  network: readable offline and attachable to an e-mail; rendered from the Jinja2 template
  ``templates/leaderboard.html.j2`` with auto-escaping on, so every name, parameter and message
  read from MLflow reaches the page as text, never as markup;
* ``leaderboard.md``: the same text and tables, figures linked from ``figures/``
  (``templates/leaderboard.md.j2``, not escaped: Markdown);
* ``architectures.csv``, ``explanations.csv``, ``architecture_cases.csv``,
  ``explanation_cases.csv``: the tables with full precision and run ids;
* ``figures/*.png``: see :mod:`~benchmark.reporting.charts`; the study's experiments' figures
  (``experiment_<name>_*.png``) are copied from their MLflow runs (:mod:`~benchmark.reporting.experiments`),
  and so is the newest resolution study's (:mod:`~benchmark.reporting.resolution`), shown as one more section;
* ``.strokelens-report`` (:data:`MARKER`): says the folder is a report. A report replaces an
  existing ``<out>/<study>/`` only when it carries this file (or is empty); any other folder there
  is the user's and is left untouched (:class:`~benchmark.errors.ParameterError`).

The ranking rules are those of :mod:`benchmark.reporting.leaderboard`; the report states them itself.
"""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from benchmark import REFERENCE_STUDY
from benchmark.atomic import atomic_directory, atomic_file
from benchmark.errors import DataError, ParameterError
from benchmark.evaluation.robustness import NOISE_SIGMA, ZERO_FRACTION
from benchmark.evaluation.segmentation import DISTANCE_CONVENTION
from benchmark.paths import check_writable, contained
from benchmark.reporting.charts import Figure, architecture_figures, explanation_figures
from benchmark.reporting.conclusions import conclusions
from benchmark.reporting.experiments import ExperimentSection, experiment_sections
from benchmark.reporting.leaderboard import (
    FLOOR_METHOD,
    REFERENCE_METHOD,
    StudyRuns,
    architecture_table,
    collect,
    explanation_table,
    floor_value,
    key_metrics,
)
from benchmark.reporting.resolution import resolution_section
from benchmark.reporting.tables import (
    HEADERS,
    TEXT_COLUMNS,
    architecture_display,
    explanation_displays,
    number,
)
from explain.assessment import FAITHFULNESS_STEPS
from tracking.records import Store
from tracking.runs import tracking_uri

MARKER = ".strokelens-report"
"""The file that marks a folder as a report, which the next report of the same study may replace."""

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("benchmark.reporting", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)
"""The report's templates (``benchmark/reporting/templates/``); ``*.html.j2`` are auto-escaped."""


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    folder: Path
    files: list[Path]
    architectures: pd.DataFrame
    explanations: pd.DataFrame
    missing: list[str] = field(default_factory=list)


def build_report(study: str, experiment: str, out: str | Path = "reports", store: Store | None = None) -> Report:
    """Read the study's runs from MLflow and write ``<out>/<study>/`` (replaced atomically).

    Args:
        study: the study tag of the runs.
        experiment: the MLflow experiment.
        out: the folder that receives ``<study>/``.
        store: where the runs are read (default: the experiment in the tracking store).

    Raises:
        ParameterError: ``<out>/<study>`` exists and is not a report (a file, or a non-empty folder
            without :data:`MARKER`): it is left untouched.
        DataError: there is nothing to report (no trial with a result and no explanation); the
            message lists what is missing.
    """
    target = replaceable_folder(contained(check_writable(out, "report folder"), study, "study"))
    store = store or Store(experiment)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = collect(store, study, work / "tables")
        if runs.empty:
            raise DataError(f"nothing to report for study '{study}' in experiment '{experiment}': "
                            + "; ".join(runs.missing or ["no trial reported a validation Dice"]))
        architectures, explanations = architecture_table(runs), explanation_table(runs)
        with atomic_directory(replaceable_folder(target), overwrite=(target / MARKER).is_file()) as folder:
            (folder / MARKER).write_text(f"A strokelens report of study {study!r}: the next report of this study "
                                         "replaces this whole folder.\n", encoding="utf-8")
            figures_dir = folder / "figures"
            figures_dir.mkdir()
            arch_figures = architecture_figures(runs, architectures, figures_dir)
            expl_figures = explanation_figures(runs, explanations, figures_dir, store, work / "relevance")
            sections, source = experiment_sections(store, study, figures_dir, work / "experiments")
            resolution = resolution_section(store, study, figures_dir, work / "resolution")
            sections += [resolution] if resolution is not None else []
            tables = _write_tables(folder, runs, architectures, explanations)
            context = page_context(runs, architectures, explanations, arch_figures, expl_figures)
            context.update(experiments_context(sections, source))
            for name in ("leaderboard.html", "leaderboard.md"):
                _write_text(folder / name, TEMPLATES.get_template(f"{name}.j2").render(context))
        files = [target / "leaderboard.html", target / "leaderboard.md", *(target / t.name for t in tables),
                 *(target / "figures" / f.path.name for f in arch_figures + expl_figures),
                 *(target / "figures" / f.path.name for section in sections for f in section.figures)]
    return Report(target, files, architectures, explanations, runs.missing)


def replaceable_folder(folder: Path) -> Path:
    """``folder`` if a report may be written there: absent, empty, or an earlier report (it holds :data:`MARKER`).

    Raises:
        ParameterError: ``folder`` is a file, or a non-empty folder without the marker (the user's).
    """
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"report folder '{folder}' is a file: choose another --out or remove the file")
    if folder.is_dir() and not (folder / MARKER).is_file() and any(folder.iterdir()):
        raise ParameterError(f"report folder '{folder}' already exists and is not a report (it has no {MARKER} "
                             "file), so it is left untouched: choose another --out or remove the folder")
    return folder


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_tables(folder: Path, runs: StudyRuns, architectures: pd.DataFrame, explanations: pd.DataFrame) -> list[Path]:
    paths = []
    for name, table in (("architectures.csv", architectures), ("explanations.csv", explanations)):
        if not table.empty:
            table.to_csv(folder / name, index=False)
            paths.append(folder / name)
    case_tables = [runs.cases[r.run_id].assign(name=r.architecture, kind=r.kind, run_id=r.run_id)
                   for r in runs.evaluations + runs.clinical_rules if r.run_id in runs.cases]
    if case_tables:
        pd.concat(case_tables, ignore_index=True).to_csv(folder / "architecture_cases.csv", index=False)
        paths.append(folder / "architecture_cases.csv")
    per_case = runs.explanation_cases()
    if per_case is not None:
        per_case.to_csv(folder / "explanation_cases.csv", index=False)
        paths.append(folder / "explanation_cases.csv")
    return paths


def page_context(runs: StudyRuns, architectures: pd.DataFrame, explanations: pd.DataFrame,
                 arch_figures: list[Figure], expl_figures: list[Figure]) -> dict:
    """Everything the templates show, as plain values (the templates escape them, not this function)."""
    return {
        "study": runs.study,
        "header": _header(runs),
        "missing": list(runs.missing),
        "rules": _rules(explanations),
        "conclusions": conclusions(runs, architectures, explanations),
        "architectures": None if architectures.empty else architecture_display(architectures),
        "explanations": [] if explanations.empty else explanation_displays(explanations),
        "arch_figures": [_figure(f) for f in arch_figures],
        "expl_figures": [_figure(f) for f in expl_figures],
        "text_columns": TEXT_COLUMNS,
        "reference_study": REFERENCE_STUDY,
    }


def experiments_context(sections: list[ExperimentSection], source: str) -> dict:
    """The study's experiments for the templates: one dict per experiment, and where they come from."""
    return {"experiments": [{"name": s.name, "title": s.title, "text": s.text, "tables": s.tables,
                             "figures": [_figure(f) for f in s.figures], "run_id": s.run_id} for s in sections],
            "experiments_source": source}


def _figure(figure: Figure) -> dict:
    """A figure's name, caption, path relative to the report and PNG as a base64 data URI."""
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return {"name": figure.path.stem, "caption": figure.caption, "link": f"figures/{figure.path.name}",
            "data_uri": f"data:image/png;base64,{data}"}


def emphasis(text: str) -> list[tuple[str, bool, bool]]:
    """Split a sentence with Markdown ``**bold**`` and ```code``` marks into ``(text, bold, code)`` pieces."""
    return [(piece, i % 2 == 1, j % 2 == 1)
            for i, part in enumerate(text.split("**")) for j, piece in enumerate(part.split("`")) if piece]


TEMPLATES.filters["emphasis"] = emphasis
TEMPLATES.filters["md_cell"] = lambda value: str(value).replace("|", "\\|")


def _rules(explanations: pd.DataFrame) -> list[str]:
    """The ranking rules, one paragraph each (Markdown ``**bold**`` and ```code``` marks)."""
    lines = [
        "**Architectures** are ranked by validation Dice (mean over the search's validation cases, on each case's "
        "native grid; higher first); ties go to the lower HD95, then to fewer parameters. The clinical threshold "
        "rules are ranked in the same list: core = rCBF < 30 % of the contralateral hemisphere's mean rCBF, "
        "hypoperfusion = Tmax > 6 s, and their union, computed on the raw maps with no training.",
        f"Robustness is the Dice under Gaussian noise of σ = {NOISE_SIGMA} (in the model's normalised input units; "
        f"for the rules, {NOISE_SIGMA} of each map's range) and with {ZERO_FRACTION:.0%} of the input voxels set to "
        "0. Latency is the median of batch-1 forward passes at the training grid on this machine. ± is the sample "
        "standard deviation over cases.",
        "Dice 95 % CI is the percentile bootstrap interval of the mean over cases; 'vs best' is the two-sided "
        "Wilcoxon signed-rank test of the row against the first row over the cases both scored, Holm-corrected "
        "over the rows tested: 'tied' means the data cannot tell the row from the best.",
        f"Surface distances: {DISTANCE_CONVENTION}",
        "**Budgets**: every architecture family first trains one trial with the same hyper-parameters for the "
        "full epoch budget (the cover phase: no pruning, no early stop, no time limit); later trials are pruned "
        "only against complete trials of their own family. Each row shows the epochs and seconds its trial "
        "trained, and the family's trials.",
    ]
    if not explanations.empty:
        keys = key_metrics(explanations.columns)
        floor = floor_value(explanations)
        evidence = "evidence_rank_accuracy" in keys
        lines += [
            "**Explanations** (method × filter) are ranked within each explained model (each architecture's best "
            "trial, best architecture first) by their mean rank over the key metrics "
            f"{', '.join(HEADERS.get(k, k) for k in keys)} (rank 1 is best; tied values share their average rank; a "
            "row without a key metric takes the last rank there); ties go to the higher "
            f"{HEADERS.get(keys[0], keys[0])}, then to the faster method. The rule is built so that no explainer "
            "wins by throwing relevance away or by restating the prediction.",
            "**Faithfulness** is region perturbation (Samek et al. 2017): regions are removed most relevant first "
            "(MoRF) and least relevant first (LeRF), the score is AOPC MoRF − AOPC LeRF of the explained lesion "
            "logits. A region is one modality's 2×8×8-voxel block, so the metric also tests which modality the map "
            f"says matters; it runs on every row with {FAITHFULNESS_STEPS} steps per curve (fewer than the usual 10, "
            "so that filtered rows can afford it; every row is measured at the same setting). Regions tied in "
            "relevance are removed in one fixed random order in both curves: a map that keeps one voxel leaves "
            "the rest tied and scores about 0.",
            "**Localisation** ranks by rank accuracies (Arras et al. 2022): of the K largest relevance values, the "
            "share inside the ground truth (K its size), values tied at the K-th counting with their expected "
            "share, so the zeros a filter leaves score chance, never a perfect score"
            + ("; evidence rank accuracy does this per modality against the generator's evidence maps, which a map "
               "copied to every modality cannot win." if evidence else
               ". This data has no evidence maps: no key rewards knowing which modality matters, and the "
               "`prediction` row may lead."),
            "Mass accuracies and bLRPtoOT rise when a pass filter keeps only the strongest relevance: they are shown "
            "beside **retained |R|** = Σ|R filtered| / Σ|R unfiltered| (the share of relevance the filter kept; a "
            "layer-wise filter changes what later layers receive and may exceed 1) and do not rank. The cascading "
            "randomisation test runs on unfiltered relevance only and does not rank either.",
            f"Reference rows are ranked like any method. The **random floor** is the unfiltered `{FLOOR_METHOD}` "
            f"method's {HEADERS.get(keys[0], keys[0])} ({number(floor)}): relevance drawn at random scores this much "
            f"by chance; 'above floor: no' means no better than chance. `{REFERENCE_METHOD}` is the model's own lesion "
            "probability copied to every modality: it shows the output and explains nothing, yet any localisation "
            "on the lesion rewards it. A method ranked below it adds nothing to the segmentation it explains.",
            "The heatmap over method × architecture compares the unfiltered methods across architectures (mean ± sd "
            "over the explained cases, n in each cell); ranks are not compared across architectures, since each "
            "model has its own rows. Each explanation run in MLflow carries its rank (`rank`: its best row, "
            "`rank_raw`: its unfiltered row, `architecture_rank`: its model's place in the architecture table) after "
            "the report, and each evaluation and clinical-rule run its architecture-table `rank`.",
        ]
    lines.append("Every row names the MLflow run its numbers come from (open it with `mlflow ui`).")
    return lines


def _header(runs: StudyRuns) -> list[tuple[str, str]]:
    """``(label, value)`` pairs: where the numbers come from and when the report was made."""
    items = [("Optuna study", runs.study), ("MLflow experiment", runs.experiment), ("tracking store", tracking_uri()),
             ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    if runs.searches:
        search = runs.searches[0]
        items.append(("latest search run", search.run_id))
        items.append(("data", search.params.get("data", "–")))
        best = search.tags.get("strokelens.best_trial_run")
        if best:
            items.append(("best trial run", best))
    states = pd.Series([t.state or "running" for t in runs.trials]).value_counts()
    if len(states):
        items.append(("trials", ", ".join(f"{v} {k}" for k, v in states.items())))
    if runs.explain:
        items.append(("explained model run", runs.explain[0].model_run))
        items.append(("explain runs", ", ".join(r.run_id for r in runs.explain)))
    return [(label, str(value)) for label, value in items]
