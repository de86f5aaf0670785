"""Saving and loading a finetuned timm classifier keeps its predictions bit-for-bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

from bilaf.training import (
    ModelMetadata,
    load_finetuned,
    predict_logits,
    save_finetuned,
    set_drop_path_rate,
)


def test_round_trip_gives_identical_predictions(tmp_path, digits_images) -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    set_drop_path_rate(model, 0.1)  # as finetune leaves it: extra modules, no extra weights
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics away from their initial values
        model(torch.randn(8, 3, 32, 32))
    metadata = ModelMetadata(
        backbone="tf_efficientnet_lite0",
        classes=digits_images.classes,
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        extra={"epochs": 3},
    )
    directory = save_finetuned(model, metadata, tmp_path / "finetuned")
    assert json.loads((directory / "metadata.json").read_text())["classes"] == metadata.classes

    loaded, loaded_metadata = load_finetuned(directory)
    assert loaded_metadata == metadata
    assert not loaded.training
    paths = digits_images.test.paths[:20]
    transform = metadata.eval_transform()
    before = predict_logits(model, paths, transform, batch_size=8, progress=False)
    after = predict_logits(loaded, paths, loaded_metadata.eval_transform(), batch_size=8, progress=False)
    assert before.shape == (20, 10)
    np.testing.assert_array_equal(before, after)


def test_loading_a_directory_without_a_model_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="weights.pt does not exist"):
        load_finetuned(tmp_path)


def test_metadata_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        ModelMetadata("tf_efficientnet_lite0", ["only"], 128, (0.5,) * 3, (0.5,) * 3)


class _Wrapper(nn.Module):
    """A model whose own keys start with 'module.' (as DDP's or AveragedModel's do)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.module = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_round_trip_keeps_the_factory_models_own_key_names(tmp_path) -> None:
    torch.manual_seed(0)
    model = _Wrapper(2)
    metadata = ModelMetadata("custom", ["a", "b"], 32, (0.5,) * 3, (0.5,) * 3)
    save_finetuned(model, metadata, tmp_path)
    loaded, _ = load_finetuned(tmp_path, lambda backbone, num_classes: _Wrapper(num_classes))
    assert torch.equal(loaded.module.weight, model.module.weight)
