"""Save and load a finetuned classifier as a plain state_dict plus JSON metadata.

Two files in one directory (a single DVC output / MLflow artifact directory): ``weights.pt``
(``torch.save`` of the CPU state_dict, loadable with ``weights_only=True``) and ``metadata.json``
(class names, timm backbone name, input size and normalisation), which is everything needed to
rebuild the model and its evaluation transform.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from bilaf.errors import InvalidInputError, MissingFileError
from bilaf.features.transforms import Transform, eval_transform

__all__ = ["ModelMetadata", "load_finetuned", "save_finetuned"]

WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "metadata.json"

ModelFactory = Callable[[str, int], nn.Module]


@dataclass(frozen=True)
class ModelMetadata:
    """What a saved classifier needs besides its weights."""

    backbone: str
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    # Free-form provenance, e.g. FinetuneConfig.to_dict() or the selection run id.
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise InvalidInputError(f"a classifier needs at least two classes, got {self.classes}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InvalidInputError(f"mean and std need three values, got {self.mean} and {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def eval_transform(self) -> Transform:
        """The evaluation transform this model expects."""
        return eval_transform(self.image_size, self.mean, self.std, crop_pct=self.crop_pct)


def _timm_factory(backbone: str, num_classes: int) -> nn.Module:
    return timm.create_model(backbone, pretrained=False, num_classes=num_classes)


def save_finetuned(model: nn.Module, metadata: ModelMetadata, directory: str | Path) -> Path:
    """Write ``weights.pt`` and ``metadata.json`` into ``directory`` (created); return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    (directory / METADATA_FILE).write_text(json.dumps(asdict(metadata), indent=2) + "\n")
    return directory


def load_finetuned(
    directory: str | Path,
    model_factory: ModelFactory | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelMetadata]:
    """Rebuild a saved classifier (eval mode) and its metadata.

    ``model_factory(backbone, num_classes)`` builds the bare architecture; the default is
    ``timm.create_model(backbone, pretrained=False, num_classes=num_classes)``. The state_dict must
    match it exactly.
    """
    directory = Path(directory)
    weights, meta_path = directory / WEIGHTS_FILE, directory / METADATA_FILE
    for path in (weights, meta_path):
        if not path.is_file():
            raise MissingFileError(f"{path} does not exist: not a saved finetuned model directory")
    raw = json.loads(meta_path.read_text())
    metadata = ModelMetadata(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    model = (model_factory or _timm_factory)(metadata.backbone, metadata.num_classes)
    # Not timm.models.load_checkpoint: its clean_state_dict strips 'module.'/'_orig_mod.' prefixes,
    # which breaks the round trip of a factory model that has such a child (a wrapper, torch.compile).
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval(), metadata
