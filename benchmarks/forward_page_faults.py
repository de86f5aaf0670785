"""Where the embedding's system time went: page faults of the bare forward pass, with glibc's
default allocation thresholds and with the ones ``bilaf.features._memory`` sets.

Each row is a fresh interpreter: 10 forward passes of a batch of 64 random 128 px images through
tf_efficientnet_lite0 (after one warm-up pass), timed with getrusage.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/forward_page_faults.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import torch
from bilaf.features import load_backbone
from bilaf.features._memory import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retained" else False
model = load_backbone("tf_efficientnet_lite0")
batch = torch.randn(64, 3, 128, 128)
with torch.inference_mode():
    model.model(batch)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(10):
        model.model(batch)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"retained": retained, "images_per_s": 640 / seconds,
                  "faults_per_batch": (after.ru_minflt - before.ru_minflt) / 10,
                  "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime}))
"""


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"forward_page_faults: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print("| allocation | img/s | minor faults per batch | user s | sys s |")
    print("|---|---|---|---|---|")
    for mode in ("default", "retained"):
        completed = subprocess.run([sys.executable, "-c", _CHILD, mode], check=True, capture_output=True, text=True)
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        label = "retain_freed_memory()" if row["retained"] else "glibc defaults"
        print(
            f"| {label} | {row['images_per_s']:.1f} | {row['faults_per_batch']:,.0f} | {row['user_s']:.1f} | "
            f"{row['sys_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
