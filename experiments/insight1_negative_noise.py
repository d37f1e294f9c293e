"""Insight 1: is a network more sensitive to perturbations of its negative ReLU inputs than of its positive ones?

    python experiments/insight1_negative_noise.py [--data-dir ../shared/data] [--limit 10000] [--alphas 5-10]
        [--out docs/img/insight1_noise.png] [--out-sides docs/img/insight1_sides.png]
        [--json docs/measurements/insight1_noise.json]

On the shared pretrained ResNet-20 (B: each layer's range on 10,000 training images), two perturbations, each
applied either only where a ReLU's input is negative or only where it is positive:

* noise: every ReLU output gets Gaussian noise of std B 2^-a (a from 12 down to 2);
* the approximation itself (the seed's leakage): at each alpha of --alphas, the PANN with per-layer B keeps its
  polynomial's output on one side and the exact ReLU on the other, next to the full PANN (both sides). Its error
  on the negative side is the leakage, the polynomial's output where ReLU is 0: its mean (signed) and mean
  absolute value relative to B are measured on the test images, with the error on the positive side likewise.

Prints test accuracy per scale (alpha) and side, and plots each.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from pann.approximation.catalog import relu_for_precision  # noqa: E402
from pann.conversion.flow import convert, observers  # noqa: E402
from pann.data import calibration_images, load_dataset  # noqa: E402
from pann.evaluate import accuracies, accuracy, calibrated  # noqa: E402
from pann.files import write_bytes_atomic  # noqa: E402
from pann.models.builders import resnet20  # noqa: E402
from pann.conversion.modules import PolyReLU  # noqa: E402
from pann.user_input import parse_alphas  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


class SidedNoiseReLU(nn.Module):
    """ReLU whose output gets N(0, std^2) noise where the input is negative (or positive)."""

    def __init__(self, std: float, side: str):
        super().__init__()
        self.std, self.side = std, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x < 0 if self.side == "negative" else x > 0
        return F.relu(x) + torch.randn_like(x) * self.std * mask


def noisy(observed: nn.Module, exponent: float, side: str) -> nn.Module:
    model = copy.deepcopy(observed)
    for name, observer in observers(model).items():
        model.set_submodule(name, SidedNoiseReLU(float(observer.max_abs) * 2.0**-exponent, side))
    return model.eval()


def keep_side(side: str):
    """Forward hook for a :class:`PolyReLU`: its output where the input is on ``side``, exact ReLU elsewhere."""
    def hook(module, inputs, output):
        x = inputs[0]
        return torch.where(x < 0 if side == "negative" else x >= 0, output, F.relu(x))
    return hook


class ErrorMeter:
    """Forward hook summing the approximation's error ``y - ReLU(x)`` relative to B, per side of the input:
    on the negative side that is the leakage (the output itself). Inputs outside [-B, B] are left out (there
    the polynomial diverges; the out-of-range rate counts them)."""

    def __init__(self):
        self.sums = {side: torch.zeros(3, dtype=torch.float64) for side in ("negative", "positive")}

    def __call__(self, module, inputs, output):
        x = inputs[0]
        error = ((output - F.relu(x)) / module.bound).double()
        inside = x.abs() <= module.bound
        for side, mask in (("negative", (x < 0) & inside), ("positive", (x > 0) & inside)):
            e = error[mask]
            self.sums[side] += torch.stack([e.sum(), e.abs().sum(), torch.tensor(e.numel(), dtype=torch.float64)])

    def means(self) -> dict[str, dict[str, float]]:
        return {side: {"mean": float(s[0] / s[2]), "mean_abs": float(s[1] / s[2])} for side, s in self.sums.items()}


def approximation_sides(observed: nn.Module, test, alphas: list[float]) -> list[dict]:
    """Accuracy of the PANN (both sides), of its polynomial on negative inputs only and on positive inputs only,
    and its error per side relative to B, at each alpha."""
    rows = []
    for alpha in alphas:
        panns, meter = {}, ErrorMeter()
        for side in ("both", "negative", "positive"):
            panns[side] = convert(observed, relu_for_precision(alpha), "layer")
            for module in panns[side].modules():
                if isinstance(module, PolyReLU):
                    module.register_forward_hook(meter if side == "both" else keep_side(side))
        scores = accuracies(list(panns.values()), test)
        rows.append({"alpha": alpha, **dict(zip(panns, scores)), "error_over_B": meter.means()})
        print(f"alpha {alpha:g}: both {100 * scores[0]:.2f}%  negative only {100 * scores[1]:.2f}%  positive only "
              f"{100 * scores[2]:.2f}%  error/B (mean, mean abs) negative {rows[-1]['error_over_B']['negative']} "
              f"positive {rows[-1]['error_over_B']['positive']}", flush=True)
    return rows


def _plot(x: list[float], series: dict[str, list[float]], backbone: float, xlabel: str, title: str,
          out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, values), marker in zip(series.items(), "os^"):
        ax.plot(x, [100 * v for v in values], marker=marker, label=label)
    ax.axhline(100 * backbone, color="grey", linestyle=":", label="backbone")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.invert_xaxis()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def noise_sides(observed: nn.Module, test) -> list[dict]:
    """Accuracy with Gaussian noise of std B 2^-a on negative inputs only and on positive inputs only, a = 12..2."""
    rows = []
    print(f"{'noise std':>12} {'negative only':>14} {'positive only':>14}")
    for a in range(12, 1, -1):
        torch.manual_seed(a)
        neg = accuracy(noisy(observed, a, "negative"), test)
        torch.manual_seed(a)
        pos = accuracy(noisy(observed, a, "positive"), test)
        rows.append({"exponent": a, "negative": neg, "positive": pos})
        print(f"{'B 2^-' + str(a):>12} {100 * neg:13.2f}% {100 * pos:13.2f}%", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--alphas", default="5-10", help="precisions of the sided approximation ('' for none)")
    parser.add_argument("--out", type=Path, default=Path("docs/img/insight1_noise.png"))
    parser.add_argument("--out-sides", type=Path, default=Path("docs/img/insight1_sides.png"))
    parser.add_argument("--json", type=Path, default=Path("docs/measurements/insight1_noise.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    model = resnet20(weights=args.data_dir / "resnet20_cifar10.pt")
    test = load_dataset("cifar10", "test", args.data_dir).subset(slice(0, args.limit))
    train = load_dataset("cifar10", "train", args.data_dir)
    observed = calibrated(model, calibration_images(train, 10000))
    backbone = accuracy(model, test)
    print(f"backbone {100 * backbone:.2f}% on {len(test)} test images", flush=True)

    out = {"backbone": backbone, "images": len(test), "rows": noise_sides(observed, test)}
    write_bytes_atomic(args.json, json.dumps(out, indent=2).encode())  # what finished is kept
    rows = out["rows"]
    _plot([r["exponent"] for r in rows], {f"noise on {side} inputs only": [r[side] for r in rows]
                                          for side in ("negative", "positive")},
          backbone, "noise std B 2^-a: a", "ResNet-20: Gaussian noise on one side of every ReLU", args.out)
    if args.alphas:
        out["approximation_sides"] = sides = approximation_sides(observed, test, parse_alphas(args.alphas))
        write_bytes_atomic(args.json, json.dumps(out, indent=2).encode())
        labels = {"both": "PANN (polynomial on both sides)", "negative": "polynomial on negative inputs only",
                  "positive": "polynomial on positive inputs only"}
        _plot([r["alpha"] for r in sides], {label: [r[side] for r in sides] for side, label in labels.items()},
              backbone, "precision alpha (ReLU error B 2^-alpha)",
              "ResNet-20: the ReLU approximation on one side only", args.out_sides)


if __name__ == "__main__":
    main()
