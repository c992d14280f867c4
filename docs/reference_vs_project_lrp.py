"""The figure ``docs/reference_vs_project_lrp.png``: the study's LRP against the project's on one synthetic case.

Run from the repository root: ``python -m docs.reference_vs_project_lrp`` (random weights, seed 0,
as committed) or ``python -m docs.reference_vs_project_lrp --epochs 20`` (the network trained first
with the ``paper`` profile's settings on the other synthetic cases). One synthetic case (the project's
generator, seed 0) at the study's 48×48×19 grid goes through the study's network
(``unet3d_reference``, width 0.25); the slice through the lesion's centre shows the input relevance
summed over modalities of ``reference_lrp`` (the study's propagation, its defaults) and of the
project's ``lrp_zplus`` and ``lrp_epsilon`` with the study's target (``target="map"``: the lesion
class of the whole output map; ``reference_lrp`` starts from both classes). Each panel is scaled by
its own max |R|; its title gives the L1 distance to ``reference_lrp`` of both maps normalised to
Σ|R| = 1 (0: the same, 2: disjoint) and the Spearman correlation over all voxels and modalities.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import explain  # noqa: E402
import models  # noqa: E402
from benchmark.data.cases import discover, read_case  # noqa: E402
from benchmark.data.preprocessing import PreprocessConfig, prepare  # noqa: E402
from benchmark.data.synthetic import write_dataset  # noqa: E402
from benchmark.figures import lesion_slice  # noqa: E402
from benchmark.training.loop import TrainConfig, fit, seed_everything  # noqa: E402
from benchmark.training.profiles import PROFILES  # noqa: E402

OUT = Path(__file__).resolve().parent / "reference_vs_project_lrp.png"
WIDTH = 0.25


def _network(cases, epochs: int):
    seed_everything(0)
    model = models.build("unet3d_reference", 6, width=WIDTH)
    if epochs > 0:
        paper = PROFILES["paper"].fixed
        config = TrainConfig(epochs=epochs, batch_size=1, lr=paper["lr"], weight_decay=paper["weight_decay"],
                             loss=paper["loss"], augment=paper["augment"], augmentation="study", patience=0,
                             device="cpu")
        fit(model, cases[1:], cases[:1], config)
    return model.eval()


def main(argv=None) -> Path:
    """Make the figure; returns its path."""
    parser = argparse.ArgumentParser(prog="python -m docs.reference_vs_project_lrp", description=__doc__)
    parser.add_argument("--epochs", type=int, default=0, help="training epochs first (0: random weights)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    config = PreprocessConfig()  # the study's 48×48×19, min-max
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp) / "data", 5 if args.epochs > 0 else 1, seed=0, shapes=((96, 96, 19),),
                             progress=False)
        cases = [prepare(read_case(r), config) for r in discover(data, split="train")]
    model = _network(cases, args.epochs)
    case = cases[0]
    x = torch.from_numpy(case.image[None]).float()
    maps = {"reference_lrp (the study's)": explain.attribute(model, x, "reference_lrp"),
            "lrp_zplus (project), target map": explain.attribute(model, x, "lrp_zplus", target="map"),
            "lrp_epsilon (project), target map": explain.attribute(model, x, "lrp_epsilon", target="map")}
    scaled = {k: (v / v.abs().sum().clamp(min=1e-30))[0].numpy() for k, v in maps.items()}
    reference = next(iter(scaled.values()))
    z = lesion_slice(case.label > 0.5)
    channel = list(config.modalities).index("Tmax")
    fig, axes = plt.subplots(1, 1 + len(scaled), figsize=(4 * (1 + len(scaled)), 4.4))
    axes[0].imshow(case.image[channel, z], cmap="gray")
    axes[0].contour(case.label[z] > 0.5, levels=[0.5], colors="lime", linewidths=1)
    axes[0].set_title(f"{case.case_id}: Tmax, slice {z}\nlesion in green", fontsize=9)
    for ax, (name, relevance) in zip(axes[1:], scaled.items()):
        shown = relevance.sum(axis=0)[z]
        bound = float(np.abs(shown).max()) or 1.0
        ax.imshow(shown, cmap="bwr", vmin=-bound, vmax=bound)
        ax.contour(case.label[z] > 0.5, levels=[0.5], colors="lime", linewidths=0.8)
        distance = float(np.abs(relevance - reference).sum())
        rho = float(stats.spearmanr(relevance.ravel(), reference.ravel()).statistic)
        ax.set_title(f"{name}\nL1 to reference (unit mass) {distance:.2f}, Spearman {rho:.2f}", fontsize=9)
        print(f"{name}: L1 distance to reference_lrp at unit mass {distance:.3f}, Spearman {rho:.3f}")
    for ax in axes:
        ax.set_axis_off()
    weights = "random weights (seed 0)" if args.epochs == 0 else f"{args.epochs} epochs of the paper profile's training"
    fig.suptitle(f"unet3d_reference (width {WIDTH}), {weights}: relevance summed over the six modalities, "
                 "red positive, blue negative", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
