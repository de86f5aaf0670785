"""Label Studio hand-off: the import tasks for a batch and the labeling config they are shown with.

Label Studio shows a local image only through its Local Files storage: `data.image` must be
`/data/local-files/?d=<path relative to LOCAL_FILES_DOCUMENT_ROOT>`, and the project needs a Local
Files storage whose path is a folder under that root holding the images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from bilaf.errors import InvalidInputError

LOCAL_FILES_URL = "/data/local-files/?d="
LABEL_FIELD = "label"  # the Choices tag's name: the label column/key in every Label Studio export
IMAGE_FIELD = "image"  # the task's data key the Image tag reads


def labeling_config(classes: Sequence[str]) -> str:
    """Label Studio XML for single-label image classification over `classes`, Choices named `label`."""
    if not classes:
        raise InvalidInputError("labeling config needs at least one class; the manifest names none")
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in classes)
    return (
        f'<View>\n  <Image name="{IMAGE_FIELD}" value="${IMAGE_FIELD}"/>\n'
        f'  <Choices name="{LABEL_FIELD}" toName="{IMAGE_FIELD}" choice="single" required="true">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )


def local_files_url(image_path: Path, document_root: Path) -> str:
    """The URL Label Studio serves `image_path` at, given its LOCAL_FILES_DOCUMENT_ROOT."""
    image, root = Path(os.path.abspath(image_path)), Path(os.path.abspath(document_root))
    if root not in image.parents:
        raise InvalidInputError(
            f"image {image} is outside the Label Studio document root {root}: choose a document "
            "root holding every image (`bilaf labels tasks --document-root DIR`)"
        )
    return LOCAL_FILES_URL + quote(image.relative_to(root).as_posix())


def label_studio_tasks(
    batch_rows: Sequence[Mapping[str, Any]], image_paths: Mapping[str, Path], document_root: Path
) -> list[dict[str, Any]]:
    """One Label Studio task per batch row (to_annotate.csv's columns), its image served as a local file.

    `image_paths` maps item id -> image file. The task's data holds `image`, our id as `item_id` (what
    every export carries back) and the row's other columns (rank, role, cluster, ...) for annotators
    to sort and filter by; a missing number becomes null, as JSON has no NaN.
    """
    missing = [str(row["id"]) for row in batch_rows if row["id"] not in image_paths]
    if missing:
        raise InvalidInputError(f"no image path for {len(missing)} batch id(s), first: {', '.join(missing[:10])}")
    return [
        {
            "data": {
                IMAGE_FIELD: local_files_url(image_paths[row["id"]], document_root),
                "item_id": str(row["id"]),
                **{column: _json_value(value) for column, value in row.items() if column not in ("id", "path")},
            }
        }
        for row in batch_rows
    ]


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def document_root_for(image_paths: Iterable[Path], preferred: Path) -> Path:
    """``preferred`` (the project folder) when it holds every image, else the deepest folder that
    holds ``preferred`` and every image: the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to serve them."""
    folders = [Path(os.path.abspath(preferred)), *(Path(os.path.abspath(path)).parent for path in image_paths)]
    return Path(os.path.commonpath(folders))
