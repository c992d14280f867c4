"""Stores that a kill cannot break and that never hang: atomic creation, repair, bounded reach."""

import sqlite3
import time

import pytest
from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError
from tracking.services import free_port
from tracking.stores import check_reachable, prepare_sqlite


def _mlflow_schema(url):
    MlflowClient(url).search_experiments()


def test_a_new_store_appears_complete_or_not_at_all(tmp_path):
    url = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / ".mlflow.db.999.building").write_text("left by a killed creation")

    def killed(building):
        _mlflow_schema(building)
        raise KeyboardInterrupt  # stopped after the schema, before the rename

    with pytest.raises(KeyboardInterrupt):
        prepare_sqlite(url, killed)
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.glob(".*.building"))
    prepare_sqlite(url, _mlflow_schema)
    assert (tmp_path / "mlflow.db").is_file()
    assert MlflowClient(url).search_experiments()  # the Default experiment: a complete schema


def test_an_interrupted_migration_is_repaired(tmp_path):
    url = f"sqlite:///{tmp_path}/mlflow.db"
    prepare_sqlite(url, _mlflow_schema)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # what a SIGKILL inside alembic's batch copy leaves
        db.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
    prepare_sqlite(url, _mlflow_schema)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "_alembic_tmp_experiments" not in names and "experiments" in names
    assert MlflowClient(url).search_experiments()


def test_an_unreachable_server_is_a_bounded_one_line_error():
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"did not answer within 2 s.*make server"):
        check_reachable(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert time.monotonic() - started < 10
    check_reachable("sqlite:///x.db")  # not a server: nothing to check
