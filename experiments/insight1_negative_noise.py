"""Insight 1: is a network more sensitive to perturbations of its negative ReLU inputs than of its positive ones?

    python experiments/insight1_negative_noise.py [--data-dir ../shared/data] [--limit 10000]
        [--out docs/img/insight1_noise.png] [--json docs/measurements/insight1_noise.json]

On the shared pretrained ResNet-20, every ReLU output gets Gaussian noise of std B 2^-a (B: that layer's
range on 10,000 training images; a from 12 down to 2) either only where the input is negative (what a
polynomial's leakage does) or only where it is positive. Prints test accuracy per scale and side, and plots it.
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

from pann.convert import observers  # noqa: E402
from pann.data import load_dataset  # noqa: E402
from pann.evaluate import accuracy, calibrated  # noqa: E402
from pann.models import resnet20  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path("docs/img/insight1_noise.png"))
    parser.add_argument("--json", type=Path, default=Path("docs/measurements/insight1_noise.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    model = resnet20(weights=args.data_dir / "resnet20_cifar10.pt")
    test = load_dataset("cifar10", "test", args.data_dir).subset(slice(0, args.limit))
    train = load_dataset("cifar10", "train", args.data_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    observed = calibrated(model, train.subset(order[:10000]))
    backbone = accuracy(model, test)

    exponents = list(range(12, 1, -1))
    rows = []
    print(f"backbone {100 * backbone:.2f}% on {len(test)} test images")
    print(f"{'noise std':>12} {'negative only':>14} {'positive only':>14}")
    for a in exponents:
        torch.manual_seed(a)
        neg = accuracy(noisy(observed, a, "negative"), test)
        torch.manual_seed(a)
        pos = accuracy(noisy(observed, a, "positive"), test)
        rows.append({"exponent": a, "negative": neg, "positive": pos})
        print(f"{'B 2^-' + str(a):>12} {100 * neg:13.2f}% {100 * pos:13.2f}%")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(exponents, [100 * r["negative"] for r in rows], marker="o", label="noise on negative inputs only")
    ax.plot(exponents, [100 * r["positive"] for r in rows], marker="s", label="noise on positive inputs only")
    ax.axhline(100 * backbone, color="grey", linestyle=":", label="backbone")
    ax.set_xlabel("noise std B 2^-a: a")
    ax.set_ylabel("test accuracy (%)")
    ax.invert_xaxis()
    ax.set_title("ResNet-20: Gaussian noise on one side of every ReLU")
    ax.grid(alpha=0.3)
    ax.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    args.json.write_text(json.dumps({"backbone": backbone, "images": len(test), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
