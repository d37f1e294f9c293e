"""What each linear layer of an encrypted PANN holds while it runs: diagonals and rotation keys per block, whole and
split into parts of at most N diagonals (``pann fhe-check --diagonals-per-transform N``). No keys are made.

    PANN_DATA_DIR=../shared/data python experiments/fhe_block_keys.py --model resnet20 --weights resnet20_cifar10 \
        --alpha 8 --params bootstrap-128 --parts 16,32,64

Runs Orion's fit and compile on the uniform PANN with the linear transforms replaced by a count: each block's
transform (and each part's) is made in Orion's ``load`` mode (no diagonal encoded) only to ask Lattigo which
rotation keys its baby-step giant-step evaluation needs, then deleted. One line per block: the layer, its level,
its diagonals, the keys of the whole block, and for each N the parts, the most keys a part needs and the keys all
parts need together (what a part-by-part evaluation loads without holding any key over), and what ``pann``'s
evaluation loads holding keys over (:func:`pann.fhe.patches.split_transforms`, within the block). Also prints the
size of one rotation key. Diagonals go to a temporary folder (``io_mode: save``), so that the Python side stays small.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--weights", default="resnet20_cifar10")
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--params", default="bootstrap-128")
    parser.add_argument("--parts", default="16,32,64", help="comma-separated N (diagonals per part)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sizes = [int(n) for n in args.parts.split(",") if n]

    from orion.backend.python import bootstrapper, lt_evaluator

    from pann.approximation.catalog import relu_for_precision
    from pann.conversion.flow import convert
    from pann.data import calibration_images, default_data_dir, load_dataset
    from pann.evaluate import calibrated
    from pann.fhe import backend
    from pann.fhe.params import load_params
    from pann.fhe.patches import hold_keys
    from pann.fhe.reference import plaintext
    from pann.models.builders import build_model
    from pann.models.weights import resolve

    data_dir = default_data_dir()
    model = build_model(args.model, 10, weights=resolve(args.weights, data_dir, None, model=args.model))
    calibration = calibration_images(load_dataset("cifar10", "train", data_dir), 256)
    pann = convert(calibrated(model, calibration), relu_for_precision(args.alpha), "layer", 1.2, compiled=False)
    images = next(calibration.batches(8))[0]
    plan, _ = backend.encrypted_plan(pann, images)
    _, inputs = plaintext(pann, images, plan.input)
    network = backend.build_network(plan)
    orion, _ = backend.orion_modules()
    rows = []

    def keys_of(evaluator, layer, indices, block) -> set[int]:
        data = [value for index in indices for value in block[index]]
        transform = evaluator.backend.GenerateLinearTransform(indices, data, layer.level, layer.bsgs_ratio, "load")
        keys = set(evaluator.backend.GetLinearTransformRotationKeys(transform))
        evaluator.backend.DeleteLinearTransform(transform)
        return keys

    def count(self, layer):  # replaces NewEvaluator.generate_transforms: no transform is kept
        for (row, col), block in layer.diagonals.items():
            indices = sorted(block)
            entry = {"layer": layer.name, "block": f"{row}_{col}", "level": layer.level, "diagonals": len(indices),
                     "keys": len(keys_of(self, layer, indices, block))}
            for n in sizes:
                parts = [keys_of(self, layer, indices[i:i + n], block) for i in range(0, len(indices), n)]
                entry[f"parts_{n}"] = len(parts)
                entry[f"most_keys_{n}"] = max(len(p) for p in parts)
                entry[f"keys_loaded_{n}"] = sum(len(p) for p in parts)
                held, loads = set(), 0  # pann's evaluation: a part's keys held beside the earlier ones up to 2x
                for needed in parts:
                    held, load = hold_keys(held, needed)
                    loads += len(load)
                entry[f"keys_loaded_held_{n}"] = loads
            rows.append(entry)
            print(json.dumps(entry), flush=True)
        return {}

    lt_evaluator.NewEvaluator.generate_transforms = count
    bootstrapper.NewEvaluator.generate_bootstrapper = lambda self, slots: None  # the bootstrapper is not counted
    with tempfile.TemporaryDirectory(prefix="pann-block-keys-") as folder:
        config = copy.deepcopy(load_params(args.params).orion)
        config.setdefault("orion", {}).update(io_mode="save", diags_path=f"{folder}/diagonals.h5",
                                              keys_path=f"{folder}/keys.h5")
        scheme = orion.init_scheme(config)
        key, pointer = scheme.backend.GenerateAndSerializeRotationKey(5)
        print(f"one rotation key: {len(key) / 2**20:.1f} MiB", flush=True)
        scheme.backend.FreeCArray(pointer)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs.float()), batch_size=1)
        network.eval()
        with torch.no_grad():
            orion.fit(network, loader, batch_size=64)
            orion.compile(network)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
