"""How a study's storage scales with its workers (``python -m benchmark.perf search``).

The same small study runs with 1, 2 and 4 worker processes on each storage (SQLite, PostgreSQL, an
Optuna journal file), through the project's own study set-up (:func:`~benchmark.training.search.open_study`:
heartbeat, per-trial sampler seeds, the family pruner). Each trial samples the default profile's
space, reports :data:`EPOCHS` intermediate values and sleeps ``work_s`` in all, standing for the
training: the sleep uses no CPU, so on a 2-core machine 4 workers still overlap their "training" and
what limits the trials per minute is the storage and the sampler, which is what this measures.

Per configuration: trials per minute, the storage and sampler overhead per trial (wall seconds of a
trial minus its sleep, median, in ms), and the number of trials that duplicate another's parameters.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time

import optuna

from benchmark.training.profiles import PROFILES
from benchmark.training.studies import open_storage

EPOCHS = 5
"""Intermediate values each benchmark trial reports."""


def _objective(work_s: float, overheads: list[float]):
    from benchmark.training.search import suggest_hparams

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        hp = suggest_hparams(trial, PROFILES["default"])
        value = 0.0
        for epoch in range(EPOCHS):
            time.sleep(work_s / EPOCHS)
            value = 1.0 - abs(hp["lr"] - 1e-3) * 100 - 0.01 * epoch
            trial.report(value, epoch)
            if trial.should_prune():
                overheads.append(time.perf_counter() - started - work_s * (epoch + 1) / EPOCHS)
                raise optuna.TrialPruned()
        overheads.append(time.perf_counter() - started - work_s)
        return value

    return objective


def _worker(storage: str, study: str, trials: int, work_s: float, seed: int, queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from benchmark.training.search import open_study

    overheads: list[float] = []
    handle = open_study(study, storage, seed, PROFILES["default"])
    started = time.perf_counter()
    handle.optimize(_objective(work_s, overheads), n_trials=trials)
    queue.put((time.perf_counter() - started, overheads))


def run_configuration(storage: str, study: str, workers: int, trials: int, work_s: float) -> dict:
    """Run ``trials`` trials split over ``workers`` processes on ``storage``; their figures."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    each = max(1, trials // workers)
    started = time.perf_counter()
    processes = [context.Process(target=_worker, args=(storage, study, each, work_s, 0, queue))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    wall = time.perf_counter() - started
    ran = [t for t in optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(deepcopy=False)
           if t.state.is_finished()]
    params = [tuple(sorted(t.params.items())) for t in ran]
    overheads = [o for _, values in results for o in values]
    busiest = max(seconds for seconds, _ in results)
    return {"workers": workers, "trials": len(ran), "trials_per_minute": 60.0 * len(ran) / busiest,
            "wall_s_with_start": wall, "overhead_ms_median": 1000 * statistics.median(overheads),
            "overhead_ms_p95": 1000 * sorted(overheads)[int(0.95 * (len(overheads) - 1))],
            "duplicate_params": len(params) - len(set(params)), "work_s_per_trial": work_s}


def bench_search(worker_counts=(1, 2, 4), trials: int = 24, work_s: float = 0.5) -> dict:
    """Every worker count on SQLite, on a journal file and on a local PostgreSQL (where installed)."""
    from tracking.errors import TrackingError
    from tracking.services import LocalPostgres

    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/optuna.db", "journal": f"journal:///{tmp}/optuna.log"}
        postgres = None
        try:
            postgres = LocalPostgres()
            postgres.__enter__()
            urls["postgresql"] = postgres.url("optuna")
        except TrackingError as exc:
            skipped["postgresql"] = str(exc)
        try:
            for kind, url in urls.items():
                for n in worker_counts:
                    rows.append({"storage": kind, **run_configuration(url, f"bench-{kind}-{n}", n, trials, work_s)})
        finally:
            if postgres is not None:
                postgres.__exit__(None, None, None)
    for kind in urls:
        own = [r for r in rows if r["storage"] == kind]
        one = next((r for r in own if r["workers"] == 1), None)
        for r in own:
            r["speedup_vs_1"] = r["trials_per_minute"] / one["trials_per_minute"] if one else None
    ideal = {n: 60.0 / work_s * n for n in worker_counts}  # no storage or sampler time at all
    return {"benchmark": "search", "trials_per_configuration": trials, "epochs_per_trial": EPOCHS,
            "ideal_trials_per_minute": ideal, "rows": rows, "skipped": skipped}
