"""Wall time of `exssnet-nlp` answering --help / --version (each in a fresh process), written as JSON.

    python benchmarks/cli_startup.py --output benchmarks/results/cli_startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [["--help"], ["--version"], ["train", "--help"], ["evaluate", "--help"], ["predict", "--help"],
            ["export", "--help"], ["push", "--help"], ["methods", "--help"], ["methods"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/cli_startup_cpu.json")
    opts = parser.parse_args()
    cli = [sys.executable, "-m", "exssnet_nlp"]
    rows = []
    for args in COMMANDS:
        times = []
        for _ in range(opts.repeats):
            start = time.perf_counter()
            done = subprocess.run(cli + args, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr[-500:]}")
        rows.append({"command": "exssnet-nlp " + " ".join(args), "seconds": times, "median_seconds": statistics.median(times),
                     "under_2_seconds": statistics.median(times) < 2.0})
        print(f"{rows[-1]['command']:32s} median {rows[-1]['median_seconds']:.3f} s")
    load = os.getloadavg()
    out = {"python": sys.version.split()[0], "cpu_count": os.cpu_count(), "load_average": load, "rows": rows}
    Path(opts.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
