"""Synthetic ISLES-2017-like cases: a brain phantom, six perfusion/diffusion maps, a lesion.

The generator writes real NIfTI files in the ISLES 2017 or nnU-Net raw layout (see
:mod:`benchmark.data.cases`), deterministic for a seed: case ``i`` is drawn from
``numpy.random.default_rng([seed, i])`` alone, so files are byte-identical between runs and
do not depend on how many cases are written.

Phantom (all geometry in mm, skull-stripped: every map is 0 outside the brain):
    brain = deformed ellipsoid; cortex grey matter = outer 12 % shell plus two deep grey
    nuclei; two ventricles (CSF); white matter elsewhere. Tissue fractions are soft
    (partial volume), values are Σ fraction × tissue baseline.

Baselines (grey / white / CSF), in the units of the real maps:
    ADC 0.80e-3 / 0.72e-3 / 3.0e-3 mm²/s; rCBF 1.0 / 0.45 / 0.08 and rCBV 1.0 / 0.55 / 0.10
    (relative to normal grey matter); MTT 4.0 / 4.8 / 7.0 s; Tmax 0.8 / 1.6 / 4.0 s;
    TTP 9.0 / 10.5 / 13.0 s.

Lesion (three smooth, noise-deformed blobs with values in [0, 1], inside parenchyma only):
    ``h`` hypoperfusion (radius R), ``f`` flow deficit (radius 0.5–0.85 R, centre shifted by
    0.2–0.6 R) and ``c`` infarct core (radius 0.35–0.5 R, half-way between their centres).
    Tmax += 10 h s; MTT += 5 h s; TTP += 9 h s; rCBF ×= (1 − 0.7 f)(1 − 0.6 c);
    rCBV ×= (1 + 0.15 h)(1 − 0.6 c); ADC ×= 1 − 0.45 c.

Final infarct (OT), the documented rule over several modalities plus noise::

    OT = (c > 0.5)  ∪  [(h + n₁ > 0.4) ∩ (f + n₂ > 0.5)]

with n₁, n₂ smooth label-noise fields of amplitude 0.08. Tmax alone marks the whole
hypoperfused region (too large), rCBF alone confounds white matter and ventricles (whose
baseline flow is low), ADC alone marks only the core: no single modality and threshold
recovers OT, a combination does (``tests/test_synthetic.py`` measures it).

Confounders: ventricles with high ADC and low perfusion, Gaussian noise per modality, a
smooth multiplicative bias field per modality, and in 35 % of cases an artefact unrelated to
the lesion (a contralateral Tmax delay without flow deficit, or a bright ADC blob).

Evidence sidecar: per modality, the voxels whose value the lesion changed by more than 5 %
of the lesion's full effect (ADC: core; rCBV: core ∪ hypoperfusion; rCBF: flow deficit ∪
core; Tmax, MTT, TTP: hypoperfusion).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.cases import MODALITIES
from benchmark.atomic import atomic_directory
from benchmark.errors import ParameterError
from benchmark.data.nifti import write_volume
from benchmark.paths import check_writable

LAYOUTS: tuple[str, ...] = ("isles2017", "nnunet")

# tissue baselines (grey, white, csf) per modality
_BASELINE = {
    "ADC": (0.80e-3, 0.72e-3, 3.0e-3),
    "MTT": (4.0, 4.8, 7.0),
    "rCBF": (1.0, 0.45, 0.08),
    "rCBV": (1.0, 0.55, 0.10),
    "Tmax": (0.8, 1.6, 4.0),
    "TTP": (9.0, 10.5, 13.0),
}
# Gaussian noise standard deviation per modality, in the map's unit
_NOISE = {"ADC": 0.05e-3, "MTT": 0.35, "rCBF": 0.07, "rCBV": 0.07, "Tmax": 0.45, "TTP": 0.6}
_FOV_MM = (120.0, 220.0, 220.0)  # (D, H, W) field of view
_EVIDENCE_LEVEL = 0.05


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case, arrays in (D, H, W) order.

    Attributes:
        case_id: e.g. ``training_3``.
        maps: modality name → float32 map in its physical unit.
        label: final-infarct mask (uint8) or None for test cases.
        evidence: modality name → bool mask of voxels the lesion changed.
        affine: NIfTI voxel-to-world matrix (mm).
        clinical: the clinical-table row of the case.
    """

    case_id: str
    maps: dict[str, np.ndarray]
    label: np.ndarray | None
    evidence: dict[str, np.ndarray]
    affine: np.ndarray
    clinical: dict[str, object]


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse ``'192x192x19'`` (X×Y×Z, as grids are written in ISLES) into (X, Y, Z)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 8:
        raise ParameterError(
            f"shape '{text}' is not a grid like 192x192x19 (X x Y x Z, each at least 8)"
        )
    return shape  # type: ignore[return-value]


def _affine(shape_dhw: tuple[int, int, int]) -> np.ndarray:
    """A RAS affine with the field of view ``_FOV_MM`` centred on the origin."""
    spacing = [fov / n for fov, n in zip(_FOV_MM, shape_dhw, strict=True)]
    sx, sy, sz = spacing[2], spacing[1], spacing[0]
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(shape_dhw[2] - 1) * sx / 2, -(shape_dhw[1] - 1) * sy / 2,
                     -(shape_dhw[0] - 1) * sz / 2]
    return affine


class _Grid:
    """Voxel-centre coordinates in mm as broadcastable (D,1,1), (1,H,1), (1,1,W) arrays."""

    def __init__(self, shape_dhw: tuple[int, int, int], affine: np.ndarray):
        d, h, w = shape_dhw
        self.shape = shape_dhw
        self.z = (affine[2, 3] + affine[2, 2] * np.arange(d, dtype=np.float32))[:, None, None]
        self.y = (affine[1, 3] + affine[1, 1] * np.arange(h, dtype=np.float32))[None, :, None]
        self.x = (affine[0, 3] + affine[0, 0] * np.arange(w, dtype=np.float32))[None, None, :]

    def smooth(self, rng: np.random.Generator, terms: int = 3, wavelength=(60.0, 160.0)):
        """A smooth random field with values in about [-1, 1]: Σ of separable cosines."""
        field = np.zeros(self.shape, dtype=np.float32)
        for _ in range(terms):
            factors = []
            for axis in (self.z, self.y, self.x):
                k = 2 * np.pi / rng.uniform(*wavelength)
                factors.append(np.cos(k * axis + rng.uniform(0, 2 * np.pi)).astype(np.float32))
            field += factors[0] * factors[1] * factors[2]
        return field / np.float32(np.sqrt(terms))

    def ellipsoid_radius(self, centre, semi_axes) -> np.ndarray:
        """Normalised radius √Σ((p − centre)/semi_axis)² (1 on the ellipsoid surface)."""
        cz, cy, cx = centre
        az, ay, ax = semi_axes
        return np.sqrt(((self.z - cz) / az) ** 2 + ((self.y - cy) / ay) ** 2
                       + ((self.x - cx) / ax) ** 2).astype(np.float32)


def _soft_inside(radius: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume membership of ``radius < 1`` with a logistic edge of ``width``."""
    return (1.0 / (1.0 + np.exp(np.clip((radius - 1.0) / width, -30, 30)))).astype(np.float32)


def _blob(grid: _Grid, rng, centre, radius_mm, deform) -> np.ndarray:
    """A smooth lesion field in [0, 1]: 1 at the centre, 0.5 at about ``radius_mm``."""
    semi = radius_mm * rng.uniform(0.75, 1.25, size=3)
    semi[0] = max(semi[0], radius_mm * 0.8)
    r = grid.ellipsoid_radius(centre, semi) * (1.0 + 0.25 * deform)
    return np.exp(-0.693 * r**4).astype(np.float32)


def _tissues(grid: _Grid, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Soft grey, white, CSF fractions and the brain mask fraction."""
    semi = np.array([70.0, 85.0, 68.0]) * rng.uniform(0.92, 1.08, size=3)
    r_brain = grid.ellipsoid_radius((0.0, 0.0, 0.0), semi) * (1.0 + 0.03 * grid.smooth(rng))
    brain = _soft_inside(r_brain, 0.01)
    cortex = brain * (1.0 - _soft_inside(r_brain / 0.88, 0.02))
    nuclei = sum(_soft_inside(grid.ellipsoid_radius((0.0, 0.0, s * 22.0), (12.0, 16.0, 11.0)),
                              0.08) for s in (-1, 1))
    vent_size = rng.uniform(0.8, 1.3)
    ventricles = sum(
        _soft_inside(grid.ellipsoid_radius((8.0, 4.0, s * 9.0),
                                           np.array([11.0, 24.0, 5.0]) * vent_size), 0.08)
        for s in (-1, 1)
    )
    csf = np.clip(ventricles, 0, 1) * brain
    grey = np.clip(cortex + nuclei * brain, 0, 1) * (1.0 - csf)
    white = np.clip(brain - grey - csf, 0, 1)
    return grey, white, csf, brain


def generate_case(
    seed: int, index: int, shape_xyz: tuple[int, int, int], *, with_label: bool = True
) -> SyntheticCase:
    """Generate one case (see the module docstring for the model and its units).

    Args:
        seed: data-set seed.
        index: case number (training cases 1.., test cases are offset by 10 000).
        shape_xyz: grid as (X, Y, Z).
        with_label: keep the final-infarct label (False for test cases).

    Returns:
        The case with maps, label, evidence, affine and clinical row.
    """
    rng = np.random.default_rng([seed, index])
    shape = (shape_xyz[2], shape_xyz[1], shape_xyz[0])
    affine = _affine(shape)
    grid = _Grid(shape, affine)
    grey, white, csf, brain = _tissues(grid, rng)
    parenchyma = grey + white

    side = rng.choice([-1.0, 1.0])
    size_class = rng.choice(["small", "medium", "large"], p=[0.3, 0.4, 0.3])
    radius = {"small": rng.uniform(8, 12), "medium": rng.uniform(12, 20),
              "large": rng.uniform(21, 32)}[size_class]
    centre = np.array([rng.uniform(-25, 25), rng.uniform(-45, 45), side * rng.uniform(18, 42)])
    h = _blob(grid, rng, centre, radius, grid.smooth(rng, wavelength=(30, 80))) * parenchyma
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.2, 0.6) * radius / np.linalg.norm(shift)
    f = _blob(grid, rng, centre + shift, radius * rng.uniform(0.5, 0.85),
              grid.smooth(rng, wavelength=(30, 80))) * parenchyma
    c = _blob(grid, rng, centre + shift / 2, radius * rng.uniform(0.35, 0.5),
              grid.smooth(rng, wavelength=(30, 80))) * parenchyma

    maps = {}
    for name in MODALITIES:
        g, w, s = _BASELINE[name]
        maps[name] = g * grey + w * white + s * csf
    maps["Tmax"] += 10.0 * h
    maps["MTT"] += 5.0 * h
    maps["TTP"] += 9.0 * h
    maps["rCBF"] *= (1.0 - 0.7 * f) * (1.0 - 0.6 * c)
    maps["rCBV"] *= (1.0 + 0.15 * h) * (1.0 - 0.6 * c)
    maps["ADC"] *= 1.0 - 0.45 * c

    artefact = "none"
    if rng.uniform() < 0.35:
        artefact = str(rng.choice(["tmax_delay", "adc_bright"]))
        where = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), -side * rng.uniform(20, 40)])
        blob = _blob(grid, rng, where, rng.uniform(8, 18), grid.smooth(rng)) * parenchyma
        if artefact == "tmax_delay":
            maps["Tmax"] += 7.0 * blob
            maps["TTP"] += 4.0 * blob
        else:
            maps["ADC"] *= 1.0 + 0.8 * blob

    for name in MODALITIES:
        bias = 1.0 + 0.06 * grid.smooth(rng, terms=2, wavelength=(150, 400))
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(_NOISE[name])
        maps[name] = np.clip((maps[name] * bias + noise) * (brain > 0.5), 0, None)
        maps[name] = maps[name].astype(np.float32)

    n1 = 0.08 * grid.smooth(rng, wavelength=(15, 40))
    n2 = 0.08 * grid.smooth(rng, wavelength=(15, 40))
    label = ((c > 0.5) | ((h + n1 > 0.4) & (f + n2 > 0.5))) & (brain > 0.5)
    if not label.any():  # keep at least the core's centre voxel of tiny lesions
        label[np.unravel_index(np.argmax(c), shape)] = True
    label = label.astype(np.uint8)

    level = _EVIDENCE_LEVEL
    evidence = {"ADC": c > level, "rCBV": (c > level) | (h > level), "rCBF": (f > level) | (c > level),
                "Tmax": h > level, "MTT": h > level, "TTP": h > level}
    evidence = {k: v & (brain > 0.5) for k, v in evidence.items()}

    voxel_ml = float(np.prod(np.diag(affine)[:3])) / 1000.0
    volume_ml = float(label.sum()) * voxel_ml
    clinical = {
        "case": None,
        "mRS": int(np.clip(round(1 + volume_ml / 25 + rng.normal(0, 0.8)), 0, 6)),
        "ttMRS": int(rng.integers(85, 100)),
        "TICI": str(rng.choice(["0", "1", "2a", "2b", "3"])),
        "TSS": int(rng.integers(40, 300)),
        "TTT": int(rng.integers(60, 400)),
        "lesion_ml": round(volume_ml, 3),
        "size_class": str(size_class),
        "artefact": artefact,
    }
    return SyntheticCase("", maps, label if with_label else None, evidence, affine, clinical)


def write_dataset(
    out: str | Path,
    cases: int,
    seed: int = 0,
    shapes: Sequence[tuple[int, int, int]] = ((192, 192, 19),),
    layout: str = "isles2017",
    test_cases: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic data set; it appears at ``out`` only once complete.

    Args:
        out: target folder (for ``nnunet`` the ``Dataset501_StrokelensSynth`` folder itself).
        cases: number of training cases (with ground truth), at least 1.
        seed: data-set seed; the same seed gives byte-identical files.
        shapes: grids (X, Y, Z) cycled over cases, e.g. ``[(192, 192, 19), (128, 128, 25)]``.
        layout: ``isles2017`` or ``nnunet``.
        test_cases: cases without ground truth; default ``max(1, cases // 4)``.
        overwrite: replace an existing non-empty ``out``.
        progress: show a progress bar.

    Returns:
        The written folder.
    """
    from tqdm import tqdm

    if cases < 1:
        raise ParameterError(f"cases must be at least 1 (got {cases})")
    if layout not in LAYOUTS:
        raise ParameterError(f"layout '{layout}' is unknown: choose one of {', '.join(LAYOUTS)}")
    if not shapes:
        raise ParameterError("shapes is empty: give at least one grid such as 192x192x19")
    test_cases = max(1, cases // 4) if test_cases is None else test_cases
    if test_cases < 0:
        raise ParameterError(f"test_cases must be at least 0 (got {test_cases})")
    jobs = [(f"training_{i}", i, True) for i in range(1, cases + 1)]
    jobs += [(f"test_{i}", 10_000 + i, False) for i in range(1, test_cases + 1)]
    writer = _write_isles_case if layout == "isles2017" else _write_nnunet_case
    check_writable(out, "output folder")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        rows = []
        for n, (case_id, index, labelled) in enumerate(
            tqdm(jobs, desc="synthesising cases", unit="case", disable=not progress)
        ):
            case = generate_case(seed, index, shapes[n % len(shapes)], with_label=labelled)
            case = SyntheticCase(case_id, case.maps, case.label, case.evidence, case.affine,
                                 {**case.clinical, "case": case_id})
            writer(tmp, case, n)
            rows.append(case.clinical)
        _write_tables(tmp, rows, layout, cases, seed)
    return Path(out)


def _write_evidence(folder: Path, stem: str, case: SyntheticCase) -> None:
    stack = np.stack([case.evidence[m] for m in MODALITIES], axis=-1).astype(np.uint8)
    write_volume(folder / f"{stem}.nii.gz", stack, case.affine, dtype=np.uint8)


def _write_isles_case(root: Path, case: SyntheticCase, n: int) -> None:
    prefix = ("SMIR", "VSD")[n % 2]
    folder = root / case.case_id
    base_id = 127000 + 10 * n
    for k, name in enumerate(MODALITIES):
        stem = f"{prefix}.Brain.XX.O.MR_{name}.{base_id + k}"
        write_volume(folder / stem / f"{stem}.nii", case.maps[name], case.affine)
    if case.label is not None:
        stem = f"{prefix}.Brain.XX.O.OT.{base_id + 9}"
        write_volume(folder / stem / f"{stem}.nii", case.label, case.affine, dtype=np.uint8)
        _write_evidence(folder, "evidence", case)
        (folder / "evidence.json").write_text(json.dumps(
            {"file": "evidence.nii.gz", "modalities": list(MODALITIES),
             "meaning": "voxels whose value the synthetic lesion changed, one volume per modality"},
            indent=2) + "\n")


def _write_nnunet_case(root: Path, case: SyntheticCase, n: int) -> None:
    images = root / ("imagesTr" if case.label is not None else "imagesTs")
    for k, name in enumerate(MODALITIES):
        write_volume(images / f"{case.case_id}_{k:04d}.nii.gz", case.maps[name], case.affine)
    if case.label is not None:
        write_volume(root / "labelsTr" / f"{case.case_id}.nii.gz", case.label, case.affine,
                     dtype=np.uint8)
        _write_evidence(root / "evidenceTr", case.case_id, case)


def _write_tables(root: Path, rows: list[dict], layout: str, cases: int, seed: int) -> None:
    columns = ["case", "mRS", "ttMRS", "TICI", "TSS", "TTT", "lesion_ml", "size_class", "artefact"]
    train = [r for r in rows if str(r["case"]).startswith("training_")]
    test = [r for r in rows if str(r["case"]).startswith("test_")]
    tables = [("ISLES2017_Training.csv", train, columns)]
    if test:
        tables.append(("ISLES2017_Testing.csv", test, ["case", "TICI", "TSS", "TTT"]))
    for name, table, cols in tables:
        with open(root / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(table)
    if layout == "nnunet":
        meta = {
            "channel_names": {str(k): m for k, m in enumerate(MODALITIES)},
            "labels": {"background": 0, "lesion": 1},
            "numTraining": cases,
            "file_ending": ".nii.gz",
            "name": "StrokelensSynth",
            "description": f"strokelens synthetic ISLES-2017-like data, seed {seed}",
            "evidence": {"folder": "evidenceTr", "modalities": list(MODALITIES)},
        }
        (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
