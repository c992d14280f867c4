"""Where the embedded synthetic default data set lives and how it is made."""

from __future__ import annotations

from pathlib import Path

from benchmark.data.synthetic import write_dataset

DEFAULT_DATA = Path("data") / "synthetic"
"""Relative to the working directory (the project root under ``make run``/``mlflow run``)."""

DEFAULT_CASES = 24
DEFAULT_SHAPES = ((128, 128, 19), (192, 192, 19), (128, 128, 25))
DEFAULT_SEED = 0


def ensure_default_data(path: str | Path = DEFAULT_DATA, cases: int = DEFAULT_CASES,
                        seed: int = DEFAULT_SEED) -> tuple[Path, bool]:
    """Generate the synthetic default once; later calls reuse it.

    Returns:
        (the data folder, whether it was generated now).
    """
    path = Path(path)
    if path.is_dir() and any(path.iterdir()):
        return path, False
    write_dataset(path, cases, seed=seed, shapes=DEFAULT_SHAPES, overwrite=True)
    return path, True


def default_case_count(path: str | Path = DEFAULT_DATA) -> int:
    """Training cases of an existing synthetic default (its ``training_<n>`` folders; 0 when absent)."""
    path = Path(path)
    return sum(1 for p in path.glob("training_*") if p.is_dir()) if path.is_dir() else 0
