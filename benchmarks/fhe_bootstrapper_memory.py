"""Memory and time of Orion's CKKS scheme and of one bootstrapper at a preset: resident memory after each step.

    GOGC=20 /usr/bin/time -v python benchmarks/fhe_bootstrapper_memory.py [--params bootstrap-128] [--slots 15]

What a bootstrapped network needs before its first layer: ``init_scheme`` (keys of the ring; with
``io_mode: save`` the linear layers' rotation keys go to disk later), then the one bootstrapper
``pann.fhe.backend`` builds for the largest slot count the network bootstraps (``--slots``: log2; ResNet-20's
largest bootstrapped tensor, 16 x 32 x 32, asks for 2^14). Orion generates the bootstrapping keys in the
Go back end and has no way to keep them on disk. Needs ``pip install 'pann[fhe]'``.
"""

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path


def rss():
    status = Path("/proc/self/status").read_text()
    get = lambda key: int(next(l for l in status.splitlines() if l.startswith(key)).split()[1]) / (1 << 20)  # noqa: E731,E741
    return {"rss_gib": round(get("VmRSS:"), 2), "peak_gib": round(get("VmHWM:"), 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--params", default="bootstrap-128")
    p.add_argument("--slots", type=int, default=15)
    args = p.parse_args()
    from pann.fhe import backend as fhe
    from pann.fhe.params import load_params
    from pann.fhe.patches import single_bootstrapper
    orion, _ = fhe.orion_modules()
    from orion.backend.python.bootstrapper import NewEvaluator
    params = load_params(args.params)
    steps = {"start": rss()}
    with tempfile.TemporaryDirectory(prefix="probe-") as folder:
        config = copy.deepcopy(params.orion)
        config["orion"].update(diags_path=f"{folder}/d.h5", keys_path=f"{folder}/k.h5")
        t = time.perf_counter()
        scheme = orion.init_scheme(config)
        steps["scheme"] = {**rss(), "seconds": round(time.perf_counter() - t, 1)}
        print(steps, flush=True)
        scheme.bootstrapper = single_bootstrapper(NewEvaluator)(scheme)
        scheme.bootstrapper.generate_bootstrapper(1 << args.slots)
        t = time.perf_counter()
        scheme.bootstrapper.build()
        steps["bootstrapper"] = {**rss(), "seconds": round(time.perf_counter() - t, 1), "slots_log2": args.slots}
        print(steps, flush=True)
        print(json.dumps({"params": params.name, "log_n": params.log_n, "steps": steps}), flush=True)
        orion.delete_scheme()


main()
