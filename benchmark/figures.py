"""PNG figures people look at: prediction overlays on a modality slice.

Colours: the ground-truth lesion contour is green, the predicted one red, over the grey-scale
modality at the slice with the largest lesion area.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmark.atomic import atomic_file  # noqa: E402


def _finish(fig, ax, path: Path, title: str) -> Path:
    """Title, no axes, and an atomic PNG write."""
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def lesion_slice(label: np.ndarray) -> int:
    """Index of the slice (D axis) with the most lesion voxels (the middle one when empty)."""
    area = label.reshape(label.shape[0], -1).sum(axis=1)
    return int(np.argmax(area)) if area.any() else label.shape[0] // 2


def overlay_png(path: Path, background: np.ndarray, truth: np.ndarray | None,
                prediction: np.ndarray | None, title: str) -> Path:
    """Write one overlay: a 2-D background with truth (green) and prediction (red) contours."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(background, cmap="gray", origin="lower")
    if truth is not None and truth.any():
        ax.contour(truth.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
    if prediction is not None and prediction.any():
        ax.contour(prediction.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    return _finish(fig, ax, path, title)


@torch.no_grad()
def overlay_figures(model: nn.Module, cases: Sequence, folder: Path,
                    modalities: Sequence[str], modality: str = "Tmax") -> list[Path]:
    """Overlays of a model's prediction for a few prepared cases at the training grid.

    ``cases`` are prepared cases (anything with ``case_id``, ``image`` (C, D, H, W) and ``label``).

    Returns:
        The written PNG paths, one per case (``<case>_overlay.png``).
    """
    model.eval()
    channel = list(modalities).index(modality) if modality in modalities else 0
    paths = []
    for case in cases:
        logits = model(torch.from_numpy(case.image[None]))
        prediction = (torch.softmax(logits, dim=1)[0, 1] > 0.5).numpy()
        truth = case.label > 0.5 if case.label is not None else None
        z = lesion_slice(truth if truth is not None else prediction)
        title = f"{case.case_id} slice {z}: {modalities[channel]}, truth green, prediction red"
        paths.append(overlay_png(Path(folder) / f"{case.case_id}_overlay.png", case.image[channel, z],
                                 None if truth is None else truth[z], prediction[z], title))
    return paths


def relevance_png(path: Path, background: np.ndarray, relevance: np.ndarray, lesion: np.ndarray | None,
                  title: str) -> Path:
    """Relevance over a grey modality slice, lesion contour in green.

    Red is positive, blue negative, on a symmetric scale; values under 2 % of the peak are hidden.
    """
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(background, cmap="gray", origin="lower")
    peak = float(np.abs(relevance).max()) or 1.0
    shown = np.ma.masked_where(np.abs(relevance) < 0.02 * peak, relevance)
    ax.imshow(shown, cmap="bwr", vmin=-peak, vmax=peak, alpha=0.7, origin="lower")
    if lesion is not None and lesion.any():
        ax.contour(lesion.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
    return _finish(fig, ax, path, title)


def relevance_grid_png(path: Path, image: np.ndarray, relevances: dict[str, np.ndarray], lesion: np.ndarray | None,
                       channels: Sequence[str], title: str) -> Path:
    """Raw and filtered relevance over the image slice: one row per map, one column per input channel.

    ``image`` is (C, H, W), each ``relevances`` value (C, H, W) at the same slice, ``lesion`` (H, W).
    Each panel shows the channel's grey slice with that channel's relevance on top (red positive,
    blue negative, values under 2 % of the row's peak hidden); every panel of a row shares one
    symmetric scale, ``max |R|`` over the row's channels, so rows compare by shape, not by size.
    """
    rows, cols = len(relevances), len(channels)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 0.4, 1.9 * rows + 0.6), dpi=100, squeeze=False)
    for r, (name, relevance) in enumerate(relevances.items()):
        peak = float(np.abs(relevance).max()) or 1.0
        for c, channel in enumerate(channels):
            ax = axes[r, c]
            ax.imshow(image[c], cmap="gray", origin="lower")
            shown = np.ma.masked_where(np.abs(relevance[c]) < 0.02 * peak, relevance[c])
            ax.imshow(shown, cmap="bwr", vmin=-peak, vmax=peak, alpha=0.75, origin="lower")
            if lesion is not None and lesion.any():
                ax.contour(lesion.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(channel, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
