"""Several search workers on one study from one command (``train --workers N``).

Each worker is a separate process running :func:`~benchmark.training.search.run_search` on the same
study and storage, so Optuna coordinates them exactly as it coordinates workers started by hand on
several hosts (per-trial sampler seeds, a heartbeat, retries; :mod:`benchmark.training.studies`).
Each worker runs ``trials`` trials: N workers add N × ``trials`` trials to the study.

* **Devices**: with G CUDA devices, worker i sees only device ``i mod G`` (``CUDA_VISIBLE_DEVICES``);
  without one, the CPU cores are divided: each worker gets ``max(1, cores // N)`` threads
  (``OMP_NUM_THREADS``, read by PyTorch at start) and sees no CUDA device.
* **Progress**: one line per worker, read from the study every second (the trial it runs, its epoch
  and validation Dice, the trials it finished).
* **Logs and failures**: a worker's output goes to ``<checkpoints>/<study>/workers/worker_<i>.log``;
  the command fails when any worker fails, naming the worker, its exit code and its log's last line.
* **Stops**: Ctrl-C or SIGTERM stops every worker (each fails its trial as interrupted, and the next
  start retries it from its checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from tqdm import tqdm

from benchmark.errors import ParameterError, StrokelensError
from benchmark.training.studies import WORKER_ATTR, open_storage

POLL_S = 1.0
"""Seconds between two progress reads of the study."""


def worker_environment(index: int, workers: int, gpus: int, cores: int) -> dict[str, str]:
    """Environment variables of worker ``index`` of ``workers`` (module docstring)."""
    if gpus > 0:
        return {"CUDA_VISIBLE_DEVICES": str(index % gpus)}
    threads = str(max(1, cores // workers))
    return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` (and without ``MLFLOW_RUN_ID``) while a worker starts."""
    saved = dict(os.environ)
    os.environ.pop("MLFLOW_RUN_ID", None)  # each worker has its own search run; the project run stays here
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _worker(settings, log: str) -> None:
    """A worker process: its output to ``log``, then the search.

    Exit codes: 0 done, 2 a user error, 130 stopped (SIGINT or SIGTERM: the trial fails as interrupted
    and is retried by the next start), 1 a crash (its traceback is in the log).
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGTERM, _interrupt)
    from benchmark.training.search import describe, run_search

    try:
        print(describe(run_search(settings)), flush=True)
    except StrokelensError as exc:
        print(f"error: {exc}", flush=True)
        os._exit(2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        os._exit(130)


@dataclass
class WorkerOutcome:
    """How one worker ended."""

    index: int
    exitcode: int
    log: Path

    def line(self) -> str:
        last = [s for s in self.log.read_text(errors="replace").replace("\r", "\n").splitlines() if s.strip()]
        return f"worker {self.index} exited with {self.exitcode} ({last[-1].strip() if last else 'no output'}; " \
               f"log: {self.log})"


def _status(study: optuna.Study, pid: int) -> tuple[int, str]:
    """Trials finished by worker ``pid`` and what it runs now."""
    mine = [t for t in study.get_trials(deepcopy=False) if (t.user_attrs.get(WORKER_ATTR) or {}).get("pid") == pid]
    finished = sum(t.state.is_finished() for t in mine)
    running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
    if not running:
        return finished, "starting" if not mine else "between trials"
    trial = running[-1]
    steps = trial.intermediate_values
    now = f"trial {trial.number} {trial.params.get('architecture', '')}"
    if steps:
        epoch = max(steps)
        now += f", epoch {epoch + 1}, val Dice {steps[epoch]:.3f}"
    return finished, now


def run_workers(settings, workers: int, gpus: int | None = None, progress: bool = True) -> list[WorkerOutcome]:
    """Run ``workers`` search processes on ``settings``' study and wait for all of them.

    Args:
        settings: the search settings every worker uses (each runs ``settings.trials`` trials).
        workers: how many processes (≥ 1).
        gpus: CUDA devices to share out (None: as many as PyTorch sees).
        progress: show one progress line per worker.

    Returns:
        Each worker's outcome (exit code 0 when it finished).

    Raises:
        ParameterError: ``workers`` below 1.
    """
    if workers < 1:
        raise ParameterError(f"workers must be at least 1 (got {workers})")
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    logs = Path(settings.checkpoints) / settings.study / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    quiet = dataclasses.replace(settings, progress=False)
    context = multiprocessing.get_context("spawn")
    processes, outcomes = [], []
    for index in range(workers):
        log = logs / f"worker_{index}.log"
        log.write_text("")
        process = context.Process(target=_worker, args=(quiet, str(log)), name=f"strokelens-worker-{index}")
        with _environment(worker_environment(index, workers, gpus, os.cpu_count() or 1)):
            process.start()
        processes.append((index, process, log))
    bars = [tqdm(total=settings.trials, position=i, desc=f"worker {i}", unit="trial", disable=not progress,
                 leave=True) for i in range(workers)]
    try:
        study = None
        while any(p.is_alive() for _, p, _ in processes):
            time.sleep(POLL_S)
            study = study or _load(settings)
            for bar, (_, process, _) in zip(bars, processes):
                if study is not None and process.is_alive():
                    finished, now = _status(study, process.pid)
                    bar.n = min(finished, settings.trials)
                    bar.set_postfix_str(now, refresh=True)
    except BaseException:  # Ctrl-C or SIGTERM: stop every worker (each fails its trial as interrupted)
        for _, process, _ in processes:
            if process.is_alive():
                process.terminate()
        for _, process, _ in processes:
            process.join()
        for bar in bars:
            bar.close()
        raise
    for bar, (index, process, log) in zip(bars, processes):
        process.join()
        outcomes.append(WorkerOutcome(index, process.exitcode, log))
        bar.set_postfix_str("done" if process.exitcode == 0 else f"failed (exit {process.exitcode})")
        bar.close()
    return outcomes


def _load(settings) -> optuna.Study | None:
    """The study, once a worker created it (None before)."""
    try:
        return optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage))
    except KeyError:
        return None
