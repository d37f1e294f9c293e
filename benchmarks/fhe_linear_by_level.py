"""What one encrypted convolution costs at each level of the modulus chain, under a preset.

    OMP_NUM_THREADS=1 python benchmarks/fhe_linear_by_level.py --params bootstrap-128-deep --levels 2,5,8,11,13 \
        [--channels 64 --size 8] [--repeats 3] [--json OUT]

A 3x3 convolution of ``--channels`` channels on ``--size`` x ``--size`` images (ResNet-20's layer3: 64 x 8 x 8; layer1:
16 x 32 x 32), compiled by Orion to run at each given level (its module's ``level``: the level of its input), then
timed on one encrypted input ``--repeats`` times. Keys and diagonals go to ``pann fhe-check``'s work folder (under
``--workdir``; :mod:`pann.fhe.workdir`: removed at the end, and by the next run where this one was killed) and are
loaded when the layer runs, as the check runs a bootstrapping preset (``io_mode: save``), and no bootstrapper is
built, so this needs the scheme's keys and one layer's, not a network's. What it shows: the price of a
linear layer placed high in the chain, where a per-layer answer that shares a bootstrap between two ReLUs must put it.
Each level's compilation stays in Orion's Go back end until the process ends, so at N = 2^16 give one level per
process (``docs/measurements/fhe_deep/conv_levels.sh``; two levels of a 64-channel layer in one process were killed
for memory on a 23 GiB machine).
Needs ``pip install 'pann[fhe]'``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="bootstrap-128-deep")
    p.add_argument("--levels", default="2,5,8,11,13", help="comma-separated input levels")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--workdir", help="where the keys and diagonals go (default: the system's temporary folder)")
    args = p.parse_args()
    from pann.fhe import backend as fhe
    from pann.fhe.params import load_params
    from pann.fhe.workdir import work_folder

    orion, on = fhe.orion_modules()  # with the sparse diagonalization: Orion's own densifies a 2^15 x 2^15 block
    params = load_params(args.params)
    levels = [int(v) for v in args.levels.split(",")]
    if max(levels) > params.levels:
        p.error(f"--levels: {args.params} has {params.levels} levels")
    with work_folder(args.workdir) as folder:
        rows = _time_levels(orion, on, params, levels, args, folder)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def _time_levels(orion, on, params, levels: list[int], args: argparse.Namespace, folder: Path) -> list[dict]:
    """One row per level: the convolution compiled to run there, timed ``args.repeats`` times."""
    config = copy.deepcopy(params.orion)
    config["orion"].update(io_mode="save", diags_path=str(folder / "d.h5"), keys_path=str(folder / "k.h5"))
    torch.manual_seed(0)
    x = torch.randn(1, args.channels, args.size, args.size)
    weight = torch.randn(args.channels, args.channels, 3, 3) * 0.05
    orion.init_scheme(config)
    rows = []
    for level in levels:
        class Net(on.Module):  # the layer named after its level: Orion saves each layer's keys under its name
            def __init__(self):
                super().__init__()
                setattr(self, f"conv_at_{level}", on.Conv2d(args.channels, args.channels, 3, padding=1, bias=False))

            def forward(self, v):
                return getattr(self, f"conv_at_{level}")(v)

        net = Net()
        conv = getattr(net, f"conv_at_{level}")
        conv.weight.data.copy_(weight)
        conv.level = level
        start = time.perf_counter()
        with torch.no_grad():
            orion.fit(net, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=1), batch_size=1)
            input_level = orion.compile(net)
        compile_s = time.perf_counter() - start
        net.he()
        seconds = []
        for _ in range(args.repeats):
            ciphertext = orion.encrypt(orion.encode(x, input_level))
            start = time.perf_counter()
            out = net(ciphertext)
            seconds.append(time.perf_counter() - start)
        error = float((out.decrypt().decode().flatten()[:x.numel()]
                       - torch.nn.functional.conv2d(x, weight, padding=1).flatten()).abs().max())
        diagonals = sum(len(d) for d in conv.diagonals.values()) if getattr(conv, "diagonals", None) else None
        row = {"params": params.name, "channels": args.channels, "size": args.size, "level": input_level,
               "diagonals": diagonals, "compile_s": round(compile_s, 1), "seconds": [round(s, 3) for s in seconds],
               "median_s": round(statistics.median(seconds), 3), "max_error": error}
        print(json.dumps(row), flush=True)
        rows.append(row)
        net.eval()
        del net, conv, out, ciphertext
    orion.delete_scheme()
    return rows


if __name__ == "__main__":
    main()
