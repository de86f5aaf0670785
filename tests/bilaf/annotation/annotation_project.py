"""A tiny real project for the annotation tests: PNGs, a manifest and round 1's issued batch.

The fixtures under fixtures/ were exported by a real Label Studio 1.23.2 from tasks made for exactly
this project: the same 7 batch images (8x8 grey squares), so their `item_id`s are these items' ids.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from bilaf.features import image_id

FIXTURES = Path(__file__).parent / "fixtures"
# Class index order; a comma and quotes test the CSV round trip, a slash the JSON escaping.
CLASSES = ["T-shirt/top", "Ankle boot", 'Bag, "large"']
BATCH_SIZE = 7  # items 0..6 are round 1's batch; 7 and 8 are in the pool only


def grey_square(index: int) -> Image.Image:
    return Image.new("L", (8, 8), color=30 * index + 10)


def write_project(root: Path, pool_size: int = BATCH_SIZE + 2) -> list[str]:
    """Write data/ (PNGs + manifest) and round 1's issued batch under `root`; returns the pool's ids in order."""
    images = root / "data" / "images" / "train"
    images.mkdir(parents=True)
    ids = []
    with open(root / "data" / "manifest.csv", "w", newline="") as manifest:
        writer = csv.writer(manifest, lineterminator="\n")
        writer.writerow(["id", "path", "label", "class_name", "split", "origin"])
        for index in range(pool_size):
            image = grey_square(index)
            item = image_id(image)
            image.save(images / f"{item}.png")
            ids.append(item)
            writer.writerow([item, f"images/train/{item}.png", index % 3, CLASSES[index % 3], "train", ""])
    batch = root / "artifacts" / "annotation_batch"
    batch.mkdir(parents=True)
    with open(batch / "to_annotate.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["rank", "id", "path", "role", "cluster", "boundary_score"])
        for rank, item in enumerate(ids[:BATCH_SIZE]):
            writer.writerow([rank, item, f"images/train/{item}.png", "core", rank, ""])
    (batch / "round.json").write_text(json.dumps({"round": 1, "inputs": {}}))
    return ids


def item_ids(count: int) -> list[str]:
    """The ids of the first `count` pool items, in index order (round 1's batch: the first BATCH_SIZE)."""
    return [image_id(grey_square(index)) for index in range(count)]


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file under the store, by relative path: to prove a refused import wrote nothing."""
    return {str(path.relative_to(store)): path.read_bytes() for path in sorted(store.rglob("*")) if path.is_file()}
