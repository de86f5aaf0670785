"""Selection engine speed and memory: wall time and peak RSS per BiLAF stage.

Synthetic Gaussian-mixture features (float32), the same calls as ``select(method="bilaf")``
(inputs validated once), one fresh subprocess per scale so peak RSS is per scale:

    cifar     N = 50,000    d = 1280  K = 50     B = 1,000   target: total <= 60 s, stage 2 <= 10 s
    mid       N = 200,000   d = 384   K = 1,000  B = 10,000  target: total <= 300 s
    imagenet  N = 1,281,167 d = 384   K = 6,405  B = 25,623  target: total <= 1800 s, RSS < 8 GB

    .venv/bin/python benchmarks/selection_speed.py --scale cifar
    .venv/bin/python benchmarks/selection_speed.py --scale all --variant repo
    .venv/bin/python benchmarks/selection_speed.py --scale imagenet --activeft-iterations 100

Peak RSS is sampled every 10 ms during each stage (``peak RSS GB``) and includes the feature matrix
(``features GB`` is the RSS right after generating it). ``--threads`` sets torch's intra-op
threads: on a machine whose cores other processes also use, 1 thread can beat 2. Other processes
compete for the same cores; report the load average printed at the start with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCALES = {
    "cifar": {
        "n_items": 50_000,
        "dim": 1280,
        "n_cores": 50,
        "budget": 1_000,
        "components": 100,
        "target_s": 60.0,
        "stage2_target_s": 10.0,
        "rss_target_gb": None,
    },
    "mid": {
        "n_items": 200_000,
        "dim": 384,
        "n_cores": 1_000,
        "budget": 10_000,
        "components": 500,
        "target_s": 300.0,
        "stage2_target_s": None,
        "rss_target_gb": None,
    },
    "imagenet": {
        "n_items": 1_281_167,
        "dim": 384,
        "n_cores": 6_405,
        "budget": 25_623,
        "components": 1_000,
        "target_s": 1800.0,
        "stage2_target_s": None,
        "rss_target_gb": 8.0,
    },
}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


class PeakRss:
    """Samples this process's RSS on a background thread; ``peak`` since the last ``reset``."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, _rss_bytes())

    def reset(self) -> None:
        self.peak = _rss_bytes()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_features(n_items: int, dim: int, components: int, seed: int = 0):
    """Gaussian mixture: blobs of radius ~1 around means of norm ~1.5 (overlapping classes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = (rng.normal(size=(components, dim)) * (1.5 / np.sqrt(dim))).astype(np.float32)
    features = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 65_536):
        count = min(65_536, n_items - start)
        labels = rng.integers(0, components, size=count)
        features[start : start + count] = (
            rng.standard_normal((count, dim), dtype=np.float32) * np.float32(1.0 / np.sqrt(dim)) + means[labels]
        )
    return features


def run_scale(scale: str, variant: str, activeft_iterations: int, threads: int | None) -> dict:
    """One scale in this process: generate features, then time each stage of ``select``."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    from bilaf.selection._geometry import device
    from bilaf.selection._validation import validate_inputs
    from bilaf.selection.boundary import select_boundary_validated
    from bilaf.selection.cores import core_pick_order, method_params
    from bilaf.selection.denoise import IdcParams, denoise_validated
    from bilaf.selection.variants import resolve_settings

    config = SCALES[scale]
    monitor = PeakRss()
    features = synthetic_features(config["n_items"], config["dim"], config["components"])
    features_gb = _rss_bytes() / 1e9
    settings = resolve_settings(variant)
    rows = []

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        monitor.reset()
        start = time.perf_counter()
        yield
        rows.append({"stage": name, "seconds": time.perf_counter() - start, "peak_gb": monitor.peak / 1e9})

    with stage("validate inputs"):
        matrix = validate_inputs(features, budget=config["budget"], n_cores=config["n_cores"], normalize=True)
    with stage(f"stage 1: ActiveFT ({activeft_iterations} it)"):
        params = method_params("activeft", {"n_iterations": activeft_iterations})
        order, info = core_pick_order(matrix, config["n_cores"], "activeft", 0, settings.normalize, params)
    with stage("stage 2a: assign + IDC denoise"):
        pool = denoise_validated(matrix, np.sort(order), variant, settings, IdcParams())
    with stage("stage 2b: budget + boundary picks"):
        result = select_boundary_validated(matrix, pool, config["budget"], 1.1, settings, variant)
    monitor.close()
    assert len(result) == config["budget"]
    return {
        "scale": scale,
        "variant": variant,
        "threads": torch.get_num_threads(),
        "device": str(device()),
        "features_gb": features_gb,
        "activeft_batch": info["batch_size"],
        "rows": rows,
        "distinct": int(len(set(result.indices.tolist()))),
    }


def print_table(report: dict) -> None:
    config = SCALES[report["scale"]]
    rows = report["rows"]
    total = sum(r["seconds"] for r in rows)
    stage2 = sum(r["seconds"] for r in rows if r["stage"].startswith("stage 2"))
    peak = max(r["peak_gb"] for r in rows)
    print(
        f"\n## {report['scale']}: N={config['n_items']:,} d={config['dim']} "
        f"K={config['n_cores']:,} B={config['budget']:,}  variant={report['variant']}  "
        f"device={report['device']} threads={report['threads']}  "
        f"ActiveFT batch={report['activeft_batch']:,}  features {report['features_gb']:.2f} GB"
    )
    print(f"| {'stage':38s} | {'wall s':>8s} | {'peak RSS GB':>11s} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 13}|")
    for row in rows:
        print(f"| {row['stage']:38s} | {row['seconds']:8.1f} | {row['peak_gb']:11.2f} |")
    print(f"| {'stage 2 (2a + 2b)':38s} | {stage2:8.1f} | {'':11s} |")
    print(f"| {'total (= select(method=bilaf))':38s} | {total:8.1f} | {peak:11.2f} |")
    verdicts = [f"total {total:.0f} s vs {config['target_s']:.0f} s: {'OK' if total <= config['target_s'] else 'OVER'}"]
    if config["stage2_target_s"]:
        verdicts.append(
            f"stage 2 {stage2:.1f} s vs {config['stage2_target_s']:.0f} s: "
            f"{'OK' if stage2 <= config['stage2_target_s'] else 'OVER'}"
        )
    if config["rss_target_gb"]:
        verdicts.append(
            f"peak RSS {peak:.2f} GB vs {config['rss_target_gb']:.0f} GB: "
            f"{'OK' if peak < config['rss_target_gb'] else 'OVER'}"
        )
    print(f"{report['distinct']:,} distinct picks; " + "; ".join(verdicts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=(*SCALES, "all"), default="cifar")
    parser.add_argument("--variant", choices=("default", "repo"), default="default")
    parser.add_argument(
        "--activeft-iterations",
        type=int,
        default=300,
        help="ActiveFT iterations (official: 300; ImageNet script default 100)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's, i.e. all cores)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_scale(args.scale, args.variant, args.activeft_iterations, args.threads)))
        return
    scales = list(SCALES) if args.scale == "all" else [args.scale]
    print(f"selection_speed: {os.cpu_count()} CPUs visible; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for scale in scales:
        completed = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                "--scale",
                scale,
                "--variant",
                args.variant,
                "--activeft-iterations",
                str(args.activeft_iterations),
                *(["--threads", str(args.threads)] if args.threads else []),
            ],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        print_table(json.loads(completed.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
