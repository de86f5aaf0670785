"""Selection speed side by side, one run after the other on the same real features: the released
BiLAF code, this repository at an earlier commit (the baseline), and this repository now.

    .venv/bin/python benchmarks/selection_side_by_side.py \\
        --embeddings .cache/compare/fashion-mnist-all-all/embeddings-128 \\
        --released /tmp/bilaf-released --baseline aa45d79

Features: the first ``--items`` train items of the embeddings folder (default 50,000).
Cases, each in a fresh subprocess:
* BiLAF, K = ``--cores`` (50), B = ``--budget`` (1,000): the released ActiveFT script then its
  stage-2 script; ``select(method="bilaf")`` stage by stage, variants default and repo, baseline
  and now. The repo variant now is also run on the released code's cores, to check that its picks
  are the released code's picks, element by element.
* ActiveFT alone at K = ``--large-cores`` (1,000), ``--large-iterations`` (100) iterations:
  baseline and now, with how many picks they share.
Each ActiveFT row reports its rate as the matmul work of a full search per iteration
(2 N d K flop) over its wall time, next to what this machine sustains for that very product
(``X @ A.T``, measured in this run): above 100 % means less work is done than a full search.

``--released DIR``: a folder with ``ActiveFT_CIFAR.py`` and ``density_cluster.py`` from
Thinklab-SJTU/BiLAF (``data_selection/Core_Selection`` and ``data_selection/Boundary_Selection``).
They are copied to a scratch folder with their ``.cuda()`` calls dropped; never commit them.
``--baseline REF``: a git ref of this repository, exported with ``git archive`` to a scratch folder.
Rows whose code is not given are skipped. Keep the machine otherwise idle: the load average at the
start is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RELEASED_FILES = ("ActiveFT_CIFAR.py", "density_cluster.py")

# Runs inside the code tree under test (``sys.path[0]``); prints one JSON line.
_OURS = r"""
import json, os, sys, time
import numpy as np
import torch
from importlib import import_module
# The tree's own package (cwd): the editable install would resolve `bilaf` to the working tree.
pkg = "bilaf.selection" if os.path.isdir("bilaf/selection") else "dagster_project.selection"
sel = import_module(pkg)
assert sel.__file__.startswith(os.getcwd()), (sel.__file__, os.getcwd())
validate_inputs = import_module(pkg + "._validation").validate_inputs
core_pick_order = import_module(pkg + ".cores").core_pick_order
method_params = import_module(pkg + ".cores").method_params
denoise = import_module(pkg + ".denoise")
select_boundary_validated = import_module(pkg + ".boundary").select_boundary_validated
resolve_settings = import_module(pkg + ".variants").resolve_settings

task = json.loads(sys.argv[1])
features = np.load(task["features"])
out = {"threads": torch.get_num_threads()}
start = time.perf_counter()
if task["cores_file"]:
    order = np.array(json.load(open(task["cores_file"])), dtype=np.int64)
else:
    matrix = validate_inputs(features, n_cores=task["cores"], normalize=True)
    params = method_params("activeft", {"n_iterations": task["iterations"]})
    order, _ = core_pick_order(matrix, task["cores"], "activeft", task["seed"], True, params)
out["activeft_s"] = time.perf_counter() - start
out["cores"] = sorted(int(i) for i in order)
if task["budget"]:
    settings = resolve_settings(task["variant"])
    start = time.perf_counter()
    matrix = validate_inputs(features, budget=task["budget"], n_cores=task["cores"],
                             normalize=settings.normalize)
    pool = denoise.denoise_validated(matrix, np.sort(order), task["variant"], settings,
                                     denoise.IdcParams())
    out["idc_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result = select_boundary_validated(matrix, pool, task["budget"], 1.1, settings, task["variant"])
    out["picks_s"] = time.perf_counter() - start
    out["picks"] = [int(i) for i in result.indices]
print(json.dumps(out))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--cores", type=int, default=50)
    parser.add_argument("--budget", type=int, default=1_000)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--large-cores", type=int, default=1_000)
    parser.add_argument("--large-iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--released", type=Path, default=None)
    parser.add_argument("--baseline", default=None, help="a git ref of this repository")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bilaf-side-by-side-") as scratch_dir:
        scratch = Path(scratch_dir)
        features, labels = _features(args.embeddings, args.items)
        np.save(scratch / "features.npy", features)
        print(
            f"selection_side_by_side: N = {len(features):,}, d = {features.shape[1]}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
            flush=True,
        )
        rates = {k: _matmul_rate(features, k) for k in (args.cores, args.large_cores)}
        trees = {"now": REPO}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = _export(args.baseline, scratch / "baseline")
        rows: list[dict] = []
        released_cores = None
        if args.released:
            released_cores, row = _run_released(args, scratch, features, labels)
            rows.append(row)
        for name, tree in trees.items():
            for variant in ("default", "repo"):
                rows.append(
                    {
                        "code": name,
                        "variant": variant,
                        **_ours(tree, scratch, args, variant, args.cores, args.iterations, args.budget),
                    }
                )
        if released_cores is not None:
            same = _ours(
                REPO,
                scratch,
                args,
                "repo",
                args.cores,
                args.iterations,
                args.budget,
                cores_file=scratch / "released" / "cores.json",
            )
            rows.append(
                {
                    "code": "now, on the released cores",
                    "variant": "repo",
                    **same,
                    "same_picks": same["picks"] == rows[0]["picks"],
                }
            )
        _print_bilaf(rows, args, len(features), features.shape[1], rates[args.cores])
        large = [
            {"code": name, **_ours(tree, scratch, args, "default", args.large_cores, args.large_iterations, 0)}
            for name, tree in trees.items()
        ]
        _print_activeft(large, rows, args, len(features), features.shape[1], rates)


def _features(embeddings_dir: Path, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(REPO))
    try:
        from bilaf.features import load_embeddings
    except ImportError:
        from dagster_project.features import load_embeddings
    train = load_embeddings(embeddings_dir).subset("train")
    if n_items > len(train.features):
        raise SystemExit(f"--items {n_items} exceeds the {len(train.features)} train items")
    return (np.ascontiguousarray(train.features[:n_items], dtype=np.float32), np.asarray(train.labels[:n_items]))


def _matmul_rate(features: np.ndarray, n_columns: int) -> float:
    """GFLOP/s this machine sustains for ``features @ A.T`` with ``n_columns`` rows of A."""
    import torch

    items = torch.as_tensor(features)
    anchors = torch.randn(n_columns, items.shape[1])
    items @ anchors.T
    start = time.perf_counter()
    for _ in range(3):
        items @ anchors.T
    return 3 * 2 * items.shape[0] * items.shape[1] * n_columns / (time.perf_counter() - start) / 1e9


def _export(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _ours(
    tree: Path,
    scratch: Path,
    args: argparse.Namespace,
    variant: str,
    cores: int,
    iterations: int,
    budget: int,
    cores_file: Path | None = None,
) -> dict:
    task = {
        "features": str(scratch / "features.npy"),
        "cores": cores,
        "iterations": iterations,
        "budget": budget,
        "variant": variant,
        "seed": args.seed,
        "cores_file": str(cores_file) if cores_file else None,
    }
    env = {**os.environ, "PYTHONPATH": str(tree), "BILAF_PROGRESS": "0"}
    completed = subprocess.run(
        [sys.executable, "-c", _OURS, json.dumps(task)], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if cores_file:
        result["activeft_s"] = None
    return result


def _run_released(
    args: argparse.Namespace, scratch: Path, features: np.ndarray, labels: np.ndarray
) -> tuple[list[int], dict]:
    """The released scripts on a scratch copy (``.cuda()`` dropped), timed by wall clock."""
    code = scratch / "released"
    code.mkdir()
    for name in RELEASED_FILES:
        source = args.released / name
        if not source.is_file():
            raise SystemExit(f"--released: {source} is missing")
        (code / name).write_text(source.read_text().replace(".cuda()", ""))
    (code / "utils.py").write_text("# stand-in: only the 'fps' init the benchmark does not use needs it\n")
    np.save(code / "inputs.npy", np.hstack([features, labels[:, None].astype(np.float32)]))
    percent = args.cores * 100 / len(features)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "ActiveFT_CIFAR.py",
            "--feature_path",
            "inputs.npy",
            "--output_dir",
            ".",
            "--filename",
            "cores.json",
            "--percent",
            repr(percent),
            "--max_iter",
            str(args.iterations),
        ],
        cwd=code,
        check=True,
        capture_output=True,
    )
    activeft_s = time.perf_counter() - start
    cores = json.loads((code / "cores.json").read_text())
    if len(cores) != args.cores:
        raise SystemExit(f"released ActiveFT picked {len(cores)} cores, not {args.cores}")
    start = time.perf_counter()
    printed = subprocess.run(
        [
            sys.executable,
            "density_cluster.py",
            "--features_inputs",
            "inputs.npy",
            "--indices_file_name",
            "cores.json",
            "--cur_number",
            str(args.cores),
            "--budget",
            str(args.budget),
            "--output_dir",
            "out",
        ],
        cwd=code,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    stage2_s = time.perf_counter() - start
    times = {
        line.split(":")[0]: float(line.split(":")[1])
        for line in printed.splitlines()
        if line.startswith(("Step1 time", "Step2 time"))
    }
    picks = json.loads((code / "out" / f"Density_{args.budget}_from_ActiveFT{args.cores}.json").read_text())
    return cores, {
        "code": "released (Thinklab-SJTU/BiLAF)",
        "variant": "-",
        "activeft_s": activeft_s,
        "idc_s": stage2_s - times.get("Step2 time", 0.0),
        "picks_s": times.get("Step2 time", 0.0),
        "picks": picks,
        "cores": cores,
    }


def _rate(n_items: int, dim: int, n_cores: int, iterations: int, seconds: float) -> float:
    return 2 * n_items * dim * n_cores * iterations / seconds / 1e9


def _print_bilaf(rows: list[dict], args: argparse.Namespace, n_items: int, dim: int, machine: float) -> None:
    print(
        f"\n## BiLAF, K = {args.cores}, B = {args.budget:,}, ActiveFT {args.iterations} iterations "
        f"(machine: {machine:.0f} GFLOP/s for X @ A.T at K = {args.cores})"
    )
    print("| code | variant | ActiveFT s | ActiveFT GFLOP/s (% of machine) | IDC s | picks s | stage 2 s | total s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        activeft = row["activeft_s"]
        stage2 = row["idc_s"] + row["picks_s"]
        if activeft is None:
            speed, total, shown = "-", "-", "(released cores)"
        else:
            gflops = _rate(n_items, dim, args.cores, args.iterations, activeft)
            speed, total, shown = (
                f"{gflops:.0f} ({100 * gflops / machine:.0f} %)",
                f"{activeft + stage2:.1f}",
                f"{activeft:.1f}",
            )
        print(
            f"| {row['code']} | {row['variant']} | {shown} | {speed} | {row['idc_s']:.1f} | "
            f"{row['picks_s']:.1f} | {stage2:.1f} | {total} |"
        )
    for row in rows:
        if "same_picks" in row:
            print(
                f"repo variant now on the released cores: picks {'identical to' if row['same_picks'] else 'DIFFERENT from'} "
                f"the released code's ({len(row['picks']):,} picks)"
            )
    now = {row["variant"]: row for row in rows if row["code"] == "now"}
    for row in rows:
        if row["code"].startswith("baseline"):
            same = len(set(row["cores"]) & set(now[row["variant"]]["cores"]))
            print(
                f"now vs {row['code']}, {row['variant']}: ActiveFT "
                f"{row['activeft_s'] / now[row['variant']]['activeft_s']:.2f}x as fast, "
                f"{same} of {args.cores} cores in common"
            )


def _print_activeft(
    large: list[dict], rows: list[dict], args: argparse.Namespace, n_items: int, dim: int, rates: dict[int, float]
) -> None:
    print(
        f"\n## ActiveFT alone, K = {args.large_cores:,}, {args.large_iterations} iterations "
        f"(machine: {rates[args.large_cores]:.0f} GFLOP/s for X @ A.T at K = {args.large_cores:,})"
    )
    print("| code | ActiveFT s | GFLOP/s (% of machine) | cores in common with now |")
    print("|---|---|---|---|")
    now = next(row for row in large if row["code"] == "now")
    for row in large:
        gflops = _rate(n_items, dim, args.large_cores, args.large_iterations, row["activeft_s"])
        common = len(set(row["cores"]) & set(now["cores"]))
        print(
            f"| {row['code']} | {row['activeft_s']:.1f} | {gflops:.0f} "
            f"({100 * gflops / rates[args.large_cores]:.0f} %) | {common} of {args.large_cores:,} |"
        )
    for row in large:
        if row is not now:
            print(f"now vs {row['code']}: ActiveFT {row['activeft_s'] / now['activeft_s']:.2f}x as fast")


if __name__ == "__main__":
    main()
