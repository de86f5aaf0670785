"""What a fresh run on another CPU type changes: every stage's output, the picks and the test
accuracies, with this machine's float kernels and with the kernels other CPUs get.

    .venv/bin/python benchmarks/cpu_types.py --project .

``--project``: a folder holding ``params.yaml`` and a prepared pool ``data/`` (this repository
after ``make run``); its files are copied, never written. Each setting runs every stage in a fresh
copy, as ``stage_outputs_identity.py`` does (``bilaf.stages.run_stage`` in a subprocess):

* ``this CPU``: as it is;
* ``Intel path, AVX-512``: a library in ``LD_PRELOAD`` answers MKL's vendor check
  (``mkl_serv_intel_cpu_true``, exported by the MKL inside torch 2.14's ``libtorch_cpu.so``) with
  "Intel", so MKL takes the paths an Intel CPU gets. Meaningful on an AMD CPU with AVX-512 (on an
  Intel CPU it repeats the first setting);
* ``Intel path, AVX2``: the same, with torch's, oneDNN's and MKL's instruction sets capped at AVX2.

Prints one row per setting: the path MKL reported, the output files that differ from the first
setting's, whether the picks (ActiveFT's cores, the boundary set, the annotation batch) are the same,
and the test top-1 of the finetuned model and the probes. Needs gcc (for the preload library).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from stage_outputs_identity import REPO, _hashes, _project_copy, _run

INTEL_ANSWER = "int mkl_serv_intel_cpu_true(void) { return 1; }\nint mkl_serv_intel_cpu(void) { return 1; }\n"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
MKL_PATH = r"""
import torch
with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
    torch.ones(8, 8) @ torch.ones(8, 8)
"""


def _intel_answer(scratch: Path) -> str:
    source, library = scratch / "intel_answer.c", scratch / "libintel_answer.so"
    source.write_text(INTEL_ANSWER)
    try:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"cannot build the preload library with gcc: {error}") from None
    return str(library)


def _mkl_path(environment: dict[str, str]) -> str:
    """The instruction-set path MKL reports under ``environment`` (its verbose header)."""
    completed = subprocess.run(
        [sys.executable, "-c", MKL_PATH], env={**os.environ, **environment}, capture_output=True, text=True
    )
    header = re.search(r"for Intel\(R\) 64 architecture (.*?), Lnx", completed.stdout)
    return header.group(1) if header else "unknown"


def _picks(project: Path) -> tuple:
    artifacts = project / "artifacts"
    cores = json.loads((artifacts / "core_centers.json").read_text())["core_ids"]
    selection = json.loads((artifacts / "boundary_set" / "selection.json").read_text())["ids"]
    with open(artifacts / "annotation_batch" / "to_annotate.csv", newline="") as batch:
        annotated = [row["id"] for row in csv.DictReader(batch)]
    return tuple(cores), tuple(selection), tuple(annotated)


def _accuracies(project: Path) -> dict[str, float]:
    metrics = json.loads((project / "artifacts" / "evaluation" / "metrics.json").read_text())
    return {name: metrics[name]["top1"] for name in ("finetuned", "linear_probe", "knn")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=REPO, help="folder with params.yaml and data/")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bilaf-cpu-types-") as scratch_name:
        scratch = Path(scratch_name)
        intel = {"LD_PRELOAD": _intel_answer(scratch)}
        settings = {"this CPU": {}, "Intel path, AVX-512": intel, "Intel path, AVX2": {**intel, **AVX2}}
        first = None
        for number, (label, environment) in enumerate(settings.items()):
            project = _project_copy(args.project.resolve(), scratch / f"project-{number}")
            seconds = _run(REPO, project, environment)
            outcome = {"hashes": _hashes(project), "picks": _picks(project), "top1": _accuracies(project)}
            first = first or outcome
            differs = [path for path, digest in outcome["hashes"].items() if first["hashes"].get(path) != digest]
            rows.append((label, _mkl_path(environment), differs, outcome["picks"] == first["picks"], outcome["top1"]))
            print(f"{label}: done in {sum(seconds.values()):.0f} s", file=sys.stderr, flush=True)
    print(
        "| setting | MKL's path | outputs that differ from the first row's | picks | finetuned | linear probe | kNN |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, path, differs, same_picks, top1 in rows:
        changed = ", ".join(sorted({"/".join(Path(name).parts[1:3]) for name in differs})) or "none"
        print(
            f"| {label} | {path} | {changed} | {'identical' if same_picks else 'DIFFER'} | "
            f"{top1['finetuned']:.1%} | {top1['linear_probe']:.1%} | {top1['knn']:.1%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
