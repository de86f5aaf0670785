"""Picks depend on the pool's content, not on the order or names its files came in."""

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bilaf.features.sources import fashion_mnist_source
from bilaf.stages import run_stage

from .conftest import TINY_PARAMS

SELECTION_STAGES = ("round", "embeddings", "core_centers", "denoised_pool", "boundary_set")


def _project(root: Path, images: list, names: list[str]) -> Path:
    """An image-folder project (train/ and test/ folders, class sub-folders) without DVC or Dagster."""
    folder = root / "photos"
    for (split, label, image), name in zip(images, names):
        path = folder / split / f"class-{label}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    params = {
        **TINY_PARAMS,
        "data": {
            "source": "image-folder",
            "root": str(folder),
            "train_size": None,
            "test_size": None,
            "seed": 0,
            "on_unreadable": "skip",
        },
        "boundary": {"budget": 20, "penalty": 1.1},
        "core": {"method": "activeft", "n_cores": 6, "seed": 0},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_the_same_images_in_another_order_under_other_names_give_the_same_picks(tmp_path):
    from bilaf.config import load_params
    from bilaf.stages.paths import ProjectPaths
    from bilaf.stages.sources import sync_configured_pool

    source = fashion_mnist_source()
    chosen = [i for i, record in enumerate(source.records) if record.split == "train"][:150] + [
        i for i, record in enumerate(source.records) if record.split == "test"
    ][:40]
    images = [(source.records[i].split, source.records[i].label, source.load(i)) for i in chosen]
    order = np.random.default_rng(7).permutation(len(images))
    first = _project(tmp_path / "first", images, [f"{i:04d}.png" for i in range(len(images))])
    second = _project(tmp_path / "second", [images[i] for i in order], [f"img-{i:04d}-x.png" for i in order[::-1]])
    selections = []
    for root in (first, second):
        sync_configured_pool(ProjectPaths(root), load_params(root / "params.yaml"))
        for stage in SELECTION_STAGES:
            run_stage(stage, root)
        selections.append(
            pd.read_csv(root / "artifacts" / "boundary_set" / "selection.csv", dtype=str, keep_default_na=False)
        )
    assert len(selections[0]) == 20
    assert selections[0]["id"].tolist() == selections[1]["id"].tolist()
    assert selections[0]["role"].tolist() == selections[1]["role"].tolist()
