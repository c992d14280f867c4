"""Optuna studies that survive a stop at any moment and cooperate across workers.

* **Storage URLs**: ``sqlite:///path.db`` (one host), ``postgresql://user:password@host/db`` (many
  hosts; psycopg is pinned) and ``journal:///path/optuna.log`` (Optuna's JournalStorage on a file,
  for a shared file system without a database server).
* **Heartbeat** (RDB storages): every running trial records a heartbeat every
  :data:`HEARTBEAT_S` seconds; a trial whose heartbeat is older than :data:`GRACE_S` (its process
  was SIGKILLed, its host lost power) is failed by the next worker that starts a trial, and
  Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (formerly
  ``RetryFailedTrialCallback``) enqueues it again with its
  parameters and user attributes, so the retry resumes from the trial's last checkpoint.
* **Immediate recovery on one host**: a trial records its host and process; at start a worker
  fails at once every RUNNING trial whose process on this host no longer exists (no need to wait
  for the grace period, and the only recovery JournalStorage has), and hands it to the same
  retry callback. Trials that ended by Ctrl-C or SIGTERM (FAIL with ``interrupted``) are retried
  the same way.
* **Workers sample differently**: the sampler's random state is re-seeded at every trial from
  ``(study seed, trial number)``. Trial numbers are unique across workers, so concurrent workers
  never draw the same random numbers, and one worker alone is reproducible for a seed. TPE runs
  with ``constant_liar`` (Optuna's setting for parallel workers) so running trials repel new ones.
* **A study lock** (:func:`study_lock`) makes "enqueue the first trials of a new study" happen once
  per study, whatever the number of workers: a file lock beside a SQLite database or a journal,
  a PostgreSQL advisory lock on a server.
* **Settings**: a study records the settings it was created with (profile, epochs, grid, …) as
  user attributes; resuming it with other settings is an error naming them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from benchmark.errors import ParameterError
from tracking.locks import sqlite_lock
from tracking.stores import prepare_sqlite

HEARTBEAT_S = 10
"""Seconds between two heartbeats of a running trial (RDB storages)."""

GRACE_S = 60
"""Seconds without a heartbeat after which another worker declares a trial dead and retries it."""

MAX_RETRY = 3
"""Retries of one trial (a trial that keeps dying is a bug, not bad luck)."""

SETTINGS_ATTR = "strokelens_settings"
WORKER_ATTR, SAMPLER_SEED_ATTR, INTERRUPTED_ATTR = "worker", "sampler_seed", "interrupted"



def _experimental(call, *args, **kwargs):
    """Call an Optuna API that warns it is experimental (stable since v2.8), without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return call(*args, **kwargs)


_retry = _experimental(RetryHeartbeatStaleTrialCallback, max_retry=MAX_RETRY)


def storage_kind(url: str) -> str:
    """``sqlite``, ``postgresql`` or ``journal``; anything else is a :class:`ParameterError`."""
    for kind, prefix in (("sqlite", "sqlite:///"), ("postgresql", "postgresql"), ("journal", "journal:///")):
        if url.startswith(prefix):
            path = url[len(prefix):]
            if kind != "postgresql" and not path.strip("/"):
                example = "optuna.log" if kind == "journal" else "optuna.db"
                raise ParameterError(f"storage '{url}' names no file: use {prefix}{example}")
            return kind
    raise ParameterError(f"storage '{url}' is not a storage URL: use sqlite:///optuna.db (one host), "
                         "postgresql://user:password@host:5432/db (many hosts) or journal:///path/optuna.log")


def _journal_path(url: str) -> Path:
    return Path(url[len("journal:///"):])


CONNECT_TIMEOUT_S = 10
"""Seconds a PostgreSQL connection may take before the storage counts as unreachable."""


def _engine_options(kind: str) -> dict:
    options: dict = {"pool_pre_ping": True}
    if kind == "postgresql":
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return options


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage for ``url`` (see the module docstring), heartbeat on for RDB storages.

    Raises:
        ParameterError: an unknown scheme, a missing driver, or a store that cannot be opened.
    """
    kind = storage_kind(url)
    try:
        if kind == "journal":
            path = _journal_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        prepare_sqlite(url, lambda building: optuna.storages.RDBStorage(building).engine.dispose())
        with sqlite_lock(url):  # concurrent first creation of the tables fails
            return _experimental(optuna.storages.RDBStorage, url, heartbeat_interval=HEARTBEAT_S,
                                 grace_period=GRACE_S, heartbeat_stale_trial_callback=_retry,
                                 engine_kwargs=_engine_options(kind))
    except ImportError as exc:
        raise ParameterError(f"storage '{url}' needs a database driver that is missing ({exc.name}): "
                             "reinstall the project (make run installs psycopg)") from exc
    except Exception as exc:  # SQLAlchemy and OS errors name the cause in their first line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParameterError(f"storage '{url}' cannot be opened ({type(exc).__name__}: {first[:200]}): give a "
                             "reachable sqlite:///…, postgresql://… or journal:///… URL") from exc


@contextlib.contextmanager
def study_lock(url: str, name: str) -> Iterator[None]:
    """Exclusive across workers (and hosts, for PostgreSQL) for the block: one worker seeds a study."""
    kind = storage_kind(url)
    if kind == "sqlite":
        with sqlite_lock(url):
            yield
        return
    if kind == "journal":
        from filelock import FileLock

        with FileLock(str(_journal_path(url)) + ".strokelens.lock"):
            yield
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(f"strokelens:{name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, **_engine_options(kind))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random state is re-seeded from ``(seed, trial number)`` before every trial.

    Optuna's samplers keep one random stream per process, so workers started with the same seed
    draw the same values. Trial numbers are unique in a study, so seeding per trial makes every
    worker's draws differ while one worker alone stays reproducible.
    """

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, constant_liar=True, **kwargs)
        self.base_seed = seed

    def trial_seed(self, number: int) -> int:
        """The seed of trial ``number``: the first 31 bits of sha256(seed, number)."""
        digest = hashlib.sha256(f"{self.base_seed}:{number}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seed = self.trial_seed(trial.number)
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed + 1)
        study._storage.set_trial_user_attr(trial._trial_id, SAMPLER_SEED_ATTR, seed)
        super().before_trial(study, trial)


def worker_identity() -> dict:
    """Who runs a trial: host, process id and the process's start time (pid reuse is caught)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def _process_start(pid: int) -> str:
    """The kernel's start time of a process (Linux ``/proc/<pid>/stat`` field 22), or '' elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_alive(worker: dict | None) -> bool | None:
    """Whether the worker that ran a trial is still alive; None when it ran on another host."""
    if not worker or worker.get("host") != socket.gethostname():
        return None
    pid = int(worker.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = worker.get("started", "")
    return not started or _process_start(pid) == started


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def recover(study: optuna.Study, resumable: Callable[[FrozenTrial], bool] = lambda trial: False) -> list[int]:
    """Fail the RUNNING trials whose process on this host is gone and retry them; retry interrupted ones.

    Args:
        study: the study.
        resumable: whether a failed trial left a checkpoint; such a trial (a crash after some
            epochs) is retried too, once per failure, up to :data:`MAX_RETRY` times.

    Returns:
        The numbers of the trials handed to the retry callback now.
    """
    storage = study._storage
    handed = []
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING and worker_alive(trial.user_attrs.get(WORKER_ATTR)) is False:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    _retry(study, storage.get_trial(trial._trial_id))
                    handed.append(trial.number)
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.number not in retried and trial.params \
                and (trial.user_attrs.get(INTERRUPTED_ATTR) or resumable(trial)):
            _retry(study, trial)
            handed.append(trial.number)
    return handed


def retry_of(trial: optuna.Trial | FrozenTrial) -> int | None:
    """The number of the first trial this one retries, or None (Optuna's bookkeeping)."""
    frozen = trial if isinstance(trial, FrozenTrial) else trial.study._storage.get_trial(trial._trial_id)
    return _experimental(RetryHeartbeatStaleTrialCallback.retried_trial_number, frozen)


def check_settings(study: optuna.Study, settings: dict) -> None:
    """Record ``settings`` on a new study; on an existing one, refuse different settings.

    Raises:
        ParameterError: naming every differing setting and suggesting a new study name.
    """
    known = study.user_attrs.get(SETTINGS_ATTR)
    if known is None:
        study.set_user_attr(SETTINGS_ATTR, json.loads(json.dumps(settings)))
        return
    current = json.loads(json.dumps(settings))
    differing = sorted(k for k in set(known) | set(current) if known.get(k) != current.get(k))
    if differing:
        shown = "; ".join(f"{k}: study {known.get(k)!r}, now {current.get(k)!r}" for k in differing)
        raise ParameterError(f"study '{study.study_name}' was made with other settings ({shown}): resume it with "
                             f"its settings, or start a new study with --study {study.study_name}-2")


class QuietInterrupts(logging.Filter):
    """Drop Optuna's "trial failed" record (and its traceback) when the cause is Ctrl-C or SIGTERM."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        return not (info and info[0] is not None and issubclass(info[0], KeyboardInterrupt))


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
    """Install :class:`QuietInterrupts` on the handlers of Optuna's library logger for the block.

    Optuna logs from child loggers (``optuna.study._optimize``), whose records reach the handlers
    of ``optuna`` but not its logger-level filters, so the filter goes on the handlers.
    """
    handlers = logging.getLogger("optuna").handlers
    quiet = QuietInterrupts()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
