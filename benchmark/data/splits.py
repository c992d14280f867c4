"""The train/validation split of a study: made once by its search, saved as ``split.json``, read by every later stage.

Like nnU-Net's ``splits_final.json``, the split is an artefact, never recomputed: the search
writes it beside the study's checkpoints (``checkpoints/<study>/split.json``) and logs it to
its MLflow run; evaluation, explanation, int8 calibration and the report read it back. Each case
carries a content digest, so data that changed since the split (a case added, removed, renamed
or altered) is refused with a :class:`~benchmark.errors.DataError` naming the cases instead of
being split again silently.

``split.json`` (format ``strokelens-split/1``)::

    {"format": "strokelens-split/1",
     "digest": "<32 hex>",
     "settings": {"seed": 0, "val_fraction": 0.25, "modalities": ["ADC", …],
                  "data": "/abs/path/data/synthetic", "layout": "isles2017"},
     "cases": [{"case": "training_1", "side": "train", "digest": "<64 hex>"}, …]}

* a case's digest is SHA-256 over its model inputs and label, in sorted order of their roles
  (the modality names and ``label``): for each, ``"<role>\\0<size in bytes>\\0"`` then the file's
  bytes; the path and the file's name are not part of it, so a moved data folder still verifies;
* the split's digest is the first 32 hex digits (128 bits; MLflow keeps at most 36 characters
  for a dataset digest) of SHA-256 over one line ``"<case> <side> <case digest>\\n"`` per case, in
  the order of ``cases``. It names the split as an MLflow dataset input of the search.

The split itself: the labelled cases in discovery order are permuted by NumPy's
``default_rng(seed)``; the first ``n_val = min(n − 1, max(1, round(n · val_fraction)))`` of the
permutation are the validation side.

K-fold cross-validation (``folds`` K ≥ 2, nnU-Net's ``splits_final.json``): the same permutation is
cut into K contiguous parts of sizes differing by at most one (``numpy.array_split``); part k is the
hold-out of fold k, so the hold-outs are disjoint and cover every labelled case exactly once. Fold 0
is the study's train/validation split (its hold-out is the ``validation`` side the search selects
hyper-parameters on; ``val_fraction`` plays no part and is saved as ``null``). Such a file has format
``strokelens-split/2``: ``settings`` gains ``"folds": K`` and each case ``"fold": k`` (the fold that
holds it out), and the digest line of a case is ``"<case> <side> <case digest> <fold>\n"``. A split
with one fold keeps format 1, its digest and its file byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_file
from benchmark.data.cases import MODALITIES, CaseRef, detect_layout, discover
from benchmark.errors import DataError, ParameterError

SPLIT_FILE = "split.json"
"""The split's file name, beside a study's checkpoints and as an artifact of its search run."""
FORMAT = "strokelens-split/1"
FOLDS_FORMAT = "strokelens-split/2"
"""The format of a split with K ≥ 2 cross-validation folds."""
TRAIN, VALIDATION = "train", "validation"
DEFAULT_VAL_FRACTION = 0.25
DEFAULT_SPLIT_SEED = 0
"""The split's random seed; fixed and independent of the search's seed, so every worker agrees."""
_CHUNK = 1 << 20


def case_digest(ref: CaseRef) -> str:
    """SHA-256 (64 hex) over a case's model inputs and label (see the module docstring)."""
    roles = dict(ref.images)
    if ref.label is not None:
        roles["label"] = ref.label
    digest = hashlib.sha256()
    for role in sorted(roles):
        path = Path(roles[role])
        try:
            digest.update(f"{role}\0{path.stat().st_size}\0".encode())
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise DataError(f"'{path}' of case {ref.case_id} cannot be read ({exc.strerror}): "
                            "check the file's permissions") from exc
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitCase:
    """One labelled case of a split: its id, its side (``train`` / ``validation``) and its content digest."""

    case: str
    side: str
    digest: str
    fold: int = 0
    """The fold whose hold-out the case is (K-fold splits); 0 with one fold."""


@dataclass(frozen=True)
class Split:
    """A saved train/validation split and the settings that made it.

    Attributes:
        cases: every labelled case of the data, in discovery order, with its side and digest.
        seed: the random seed of the permutation.
        val_fraction: the fraction of cases asked for on the validation side (None with K ≥ 2 folds).
        modalities: the model inputs whose files the digests cover.
        data: the data folder (absolute) the split was made from; later stages read it unless told otherwise.
        layout: ``isles2017`` or ``nnunet``.
        source: where this copy was read from (a file or an MLflow run), for messages; not saved.
        folds: K, the number of cross-validation folds (1: one train/validation split).
    """

    cases: tuple[SplitCase, ...]
    seed: int
    val_fraction: float | None
    modalities: tuple[str, ...]
    data: str
    layout: str
    source: str = field(default="", compare=False)
    folds: int = 1

    @property
    def train_ids(self) -> list[str]:
        """The training side's case ids, in discovery order."""
        return [c.case for c in self.cases if c.side == TRAIN]

    @property
    def val_ids(self) -> list[str]:
        """The validation side's case ids, in discovery order."""
        return [c.case for c in self.cases if c.side == VALIDATION]

    def fold_ids(self, fold: int) -> tuple[list[str], list[str]]:
        """(training, hold-out) case ids of cross-validation fold ``fold``, in discovery order.

        Raises:
            ParameterError: ``fold`` is not one of 0 … K − 1.
        """
        if not 0 <= fold < self.folds:
            raise ParameterError(f"fold {fold} does not exist: the split ({self.source or 'split.json'}) has "
                                 f"{self.folds} fold(s), 0 to {self.folds - 1}")
        if self.folds == 1:
            return self.train_ids, self.val_ids
        return ([c.case for c in self.cases if c.fold != fold], [c.case for c in self.cases if c.fold == fold])

    @property
    def digest(self) -> str:
        """32 hex digits naming the split's cases, sides, folds and contents (see the module docstring)."""
        if self.folds == 1:
            lines = "".join(f"{c.case} {c.side} {c.digest}\n" for c in self.cases)
        else:
            lines = "".join(f"{c.case} {c.side} {c.digest} {c.fold}\n" for c in self.cases)
        return hashlib.sha256(lines.encode()).hexdigest()[:32]

    def settings(self) -> dict:
        """The settings that made the split (what ``split.json`` keeps under ``settings``)."""
        out = {"seed": self.seed, "val_fraction": self.val_fraction, "modalities": list(self.modalities),
               "data": self.data, "layout": self.layout}
        return out if self.folds == 1 else {**out, "folds": self.folds}

    def to_dict(self) -> dict:
        """The content of ``split.json``."""
        if self.folds == 1:
            return {"format": FORMAT, "digest": self.digest, "settings": self.settings(),
                    "cases": [{"case": c.case, "side": c.side, "digest": c.digest} for c in self.cases]}
        return {"format": FOLDS_FORMAT, "digest": self.digest, "settings": self.settings(),
                "cases": [{"case": c.case, "side": c.side, "digest": c.digest, "fold": c.fold} for c in self.cases]}

    def rows(self) -> list[dict]:
        """One row per case (case, side, digest): the table logged as the MLflow dataset."""
        return self.to_dict()["cases"]

    @classmethod
    def from_dict(cls, content: dict, source: str = "") -> Split:
        """Read ``split.json``'s content; a wrong format or a digest that does not match is a :class:`DataError`."""
        where = source or "the split"
        if not isinstance(content, dict) or content.get("format") not in (FORMAT, FOLDS_FORMAT):
            raise DataError(f"{where} is not a strokelens split ({FORMAT} or {FOLDS_FORMAT}): remove it, or use a "
                            "new --study")
        folded = content["format"] == FOLDS_FORMAT
        try:
            s = content["settings"]
            split = cls(tuple(SplitCase(str(c["case"]), str(c["side"]), str(c["digest"]),
                                        int(c["fold"]) if folded else 0) for c in content["cases"]),
                        int(s["seed"]), None if folded else float(s["val_fraction"]), tuple(s["modalities"]),
                        str(s["data"]), str(s["layout"]), source, int(s["folds"]) if folded else 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where} lacks {exc} or holds a wrong value: remove it, or use a new --study") from exc
        if any(c.side not in (TRAIN, VALIDATION) for c in split.cases) or not split.val_ids or not split.train_ids:
            raise DataError(f"{where} needs cases on both sides, train and validation: remove it, or use a new --study")
        if folded and (split.folds < 2 or {c.fold for c in split.cases} != set(range(split.folds))
                       or any((c.side == VALIDATION) != (c.fold == 0) for c in split.cases)):
            raise DataError(f"{where} needs every one of its {split.folds} folds to hold out cases, and fold 0's "
                            "hold-out as its validation side: remove it, or use a new --study")
        if content.get("digest") != split.digest:
            raise DataError(f"{where} was edited: its digest {content.get('digest')} does not match its cases "
                            f"({split.digest}); restore it, or use a new --study")
        return split

    def save(self, path: str | Path) -> Path:
        """Write ``split.json`` atomically; returns the path."""
        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, source: str = "") -> Split:
        """Read a ``split.json``; an unreadable file is a :class:`DataError` naming it (or ``source``)."""
        path = Path(path)
        source = source or str(path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"split file {source} cannot be read ({type(exc).__name__}): restore it, "
                            "or use a new --study") from exc
        return cls.from_dict(content, source)

    def verify(self, refs: Sequence[CaseRef], data: str | Path) -> None:
        """Refuse data whose labelled cases differ from the split's: added, removed, renamed or altered.

        Raises:
            DataError: one line naming the cases and the fix.
        """
        saved = {c.case: c.digest for c in self.cases}
        found = {r.case_id: r for r in refs}
        added = [c for c in found if c not in saved]
        removed = [c for c in saved if c not in found]
        altered = [c for c in saved if c in found and case_digest(found[c]) != saved[c]]
        if not (added or removed or altered):
            return
        changes = [f"{label} {_names(cases)}" for label, cases in
                   (("added", added), ("removed or renamed", removed), ("altered", altered)) if cases]
        raise DataError(f"the labelled cases of '{data}' changed since the study's split was saved "
                        f"({self.source or 'split.json'}): {'; '.join(changes)}; use a new --study, "
                        "or restore the data")

    def resolve(self, data: str | Path | None = None, with_evidence: bool = False, fold: int = 0
                ) -> tuple[list[CaseRef], list[CaseRef]]:
        """The (train, hold-out) cases of ``fold`` in ``data`` (default: the split's own folder), after :meth:`verify`.

        Fold 0 is the split's (train, validation) sides.

        Raises:
            DataError: the folder does not exist, or its cases changed since the split.
            ParameterError: the split has no fold ``fold``.
        """
        train_ids, held_out = self.fold_ids(fold)
        folder = Path(data) if data else Path(self.data)
        if not folder.is_dir():
            raise DataError(f"data folder '{folder}' of the split ({self.source or 'split.json'}) does not exist: "
                            "pass --data with the folder that holds the same cases")
        refs = discover(folder, self.modalities, split="train", with_evidence=with_evidence)
        self.verify(refs, folder)
        by_id = {r.case_id: r for r in refs}
        return [by_id[c] for c in train_ids], [by_id[c] for c in held_out]


def _names(cases: list[str], shown: int = 6) -> str:
    more = f" and {len(cases) - shown} more" if len(cases) > shown else ""
    return ", ".join(cases[:shown]) + more


def make_split(data: str | Path, modalities: Sequence[str] = MODALITIES, val_fraction: float = DEFAULT_VAL_FRACTION,
               seed: int = DEFAULT_SPLIT_SEED, folds: int = 1) -> Split:
    """Split the labelled cases of ``data`` once (see the module docstring for the rule).

    Args:
        data: the data folder.
        modalities: the model inputs the case digests cover.
        val_fraction: the validation side's fraction (one fold only).
        seed: the permutation's random seed.
        folds: K cross-validation folds (1: one train/validation split by ``val_fraction``).

    Raises:
        ParameterError: ``val_fraction`` is not inside (0, 1), or ``folds`` is below 1.
        DataError: fewer than 2 labelled cases (or fewer than K), or a case that cannot be read.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ParameterError(f"val-fraction must lie inside (0, 1) (got {val_fraction})")
    if folds < 1:
        raise ParameterError(f"folds must be at least 1 (got {folds})")
    refs = discover(data, modalities, split="train")
    if len(refs) < max(2, folds):
        raise DataError(f"a search with {folds} fold(s) needs at least {max(2, folds)} labelled cases, the data has "
                        f"{len(refs)}: add cases, lower --folds, or generate synthetic data with mlproject.synth")
    order = np.random.default_rng(seed).permutation(len(refs))
    if folds > 1:
        fold_of = {int(i): k for k, part in enumerate(np.array_split(order, folds)) for i in part}
        cases = tuple(SplitCase(r.case_id, VALIDATION if fold_of[i] == 0 else TRAIN, case_digest(r), fold_of[i])
                      for i, r in enumerate(refs))
        return Split(cases, seed, None, tuple(modalities), str(Path(data).resolve()), detect_layout(data),
                     folds=folds)
    n_val = min(len(refs) - 1, max(1, round(len(refs) * val_fraction)))
    val = {int(i) for i in order[:n_val]}
    cases = tuple(SplitCase(r.case_id, VALIDATION if i in val else TRAIN, case_digest(r)) for i, r in enumerate(refs))
    return Split(cases, seed, val_fraction, tuple(modalities), str(Path(data).resolve()), detect_layout(data))
