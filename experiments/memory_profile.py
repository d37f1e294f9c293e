"""Run a command and sample its resident memory: the whole process, Go's heap inside it, and the rest.

    python experiments/memory_profile.py --every 10 --out runs/rss.tsv -- pann fhe-check --alpha 8 ...

Writes one tab-separated line per sample: seconds since start, the process's resident memory (``VmRSS``), the part
resident in Go's heap arenas, the rest (Python, torch, glibc's heap, the shared libraries), the peak so far
(``VmHWM``), the machine's ``MemAvailable`` and, with ``--disk``, the bytes under that folder. Stops when the command
ends and exits with its status; on Ctrl-C it stops the command it started (by its PID) and nothing else.

Go's heap is told apart by address: the Go runtime (amd64, linux) reserves its heap arenas at addresses whose bits
32-39 read ``0xc0`` (``0x00c000000000``, ``0x01c000000000``, ...; ``runtime.mallocinit``'s arena hints), which
neither glibc nor Python's allocators use. Lattigo, the CKKS library under Orion, keeps its keys, plaintexts and
ciphertexts there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

KIB_PER_GIB = 1 << 20


def _go_heap(address_range: str) -> bool:
    start = int(address_range.split("-")[0], 16)
    return (start >> 32) & 0xFF == 0xC0


def sample(pid: int) -> dict[str, float]:
    """Resident GiB of ``pid``: ``rss``, ``go`` (Go heap arenas), ``other``, and the peak ``hwm``."""
    go = other = 0
    in_go = False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                in_go = _go_heap(head)
            elif head == "Rss:":
                kib = int(line.split()[1])
                go, other = (go + kib, other) if in_go else (go, other + kib)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return {"rss": (go + other) / KIB_PER_GIB, "go": go / KIB_PER_GIB, "other": other / KIB_PER_GIB,
            "hwm": hwm / KIB_PER_GIB}


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / KIB_PER_GIB
    return float("nan")


def disk_gb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9 if folder.exists() else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--out", type=Path, required=True, help="the samples, tab-separated")
    parser.add_argument("--disk", type=Path, help="also record the bytes under this folder")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(command)
    start, peak = time.monotonic(), {"rss": 0.0, "go": 0.0, "other": 0.0}
    try:
        with args.out.open("w") as out:
            out.write("seconds\trss_gib\tgo_heap_gib\tother_gib\tpeak_gib\tavailable_gib"
                      + ("\tdisk_gb" if args.disk else "") + "\n")
            while child.poll() is None:
                try:
                    s = sample(child.pid)
                except (FileNotFoundError, ProcessLookupError, StopIteration):
                    break
                peak = {k: max(peak[k], s[k]) for k in peak}
                row = [time.monotonic() - start, s["rss"], s["go"], s["other"], s["hwm"], available_gib()]
                if args.disk:
                    row.append(disk_gb(args.disk))
                out.write("\t".join(f"{v:.2f}" for v in row) + "\n")
                out.flush()
                time.sleep(args.every)
    except KeyboardInterrupt:
        child.terminate()
    status = child.wait()
    print(f"memory_profile: peak of the samples: {peak['rss']:.2f} GiB resident ({peak['go']:.2f} GiB in Go's heap, "
          f"{peak['other']:.2f} GiB other); samples in {args.out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
