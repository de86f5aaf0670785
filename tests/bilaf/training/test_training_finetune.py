"""Finetuning: schedule, configuration, stochastic depth, and real training on digit images."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

from bilaf.features.backbones import create_classifier
from bilaf.training import (
    FinetuneConfig,
    build_lr_scheduler,
    eval_transform,
    evaluate_finetuned,
    finetune,
    set_drop_path_rate,
)

MEAN = STD = (0.5, 0.5, 0.5)
# Digits are 32 px: a milder crop than the recipe's (0.08, 1) keeps every digit recognisable.
TINY = FinetuneConfig(
    epochs=8,
    batch_size=32,
    learning_rate=0.05,
    warmup_epochs=1,
    drop_path_rate=0.0,
    image_size=32,
    crop_scale=(0.6, 1.0),
)


def _lr_trace(config: FinetuneConfig, steps_per_epoch: int) -> list[float]:
    """Learning rate used by each update, then the rate after the last one."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    scheduler = build_lr_scheduler(optimizer, config, steps_per_epoch)
    trace = [optimizer.param_groups[0]["lr"]]
    for update in range(1, config.epochs * steps_per_epoch + 1):
        scheduler.step_update(update)
        trace.append(optimizer.param_groups[0]["lr"])
    return trace


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    config = FinetuneConfig(epochs=10, warmup_epochs=2, learning_rate=0.1)
    trace = _lr_trace(config, steps_per_epoch=5)
    assert trace[0] == pytest.approx(1e-6)  # first update at the warm-up start
    assert trace[5] == pytest.approx(1e-6 + (0.1 - 1e-6) / 2)  # half-way through warm-up
    assert trace[10] == pytest.approx(0.1)  # peak right after warm-up
    assert trace[30] == pytest.approx((0.1 + 1e-5) / 2)  # cosine mid-point
    assert trace[-1] == pytest.approx(1e-5)  # floor at the end
    decay = np.array(trace[10:])
    assert np.all(np.diff(decay) <= 0)


def test_full_recipe_matches_the_paper() -> None:
    recipe = FinetuneConfig.full_recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.image_size) == (1000, 512, 224)
    assert recipe.learning_rate == pytest.approx(3e-3)
    assert (recipe.warmup_epochs, recipe.warmup_lr, recipe.min_lr) == (5, 1e-6, 1e-5)
    assert (recipe.momentum, recipe.weight_decay, recipe.label_smoothing) == (0.9, 1e-4, 0.1)
    assert (recipe.clip_grad_norm, recipe.drop_path_rate) == (2.0, 0.1)
    assert recipe.crop_scale == (0.08, 1.0)  # timm's RandomResizedCrop default
    # linear scaling with the global batch, and overrides
    assert FinetuneConfig.full_recipe(batch_size=128).learning_rate == pytest.approx(7.5e-4)
    assert FinetuneConfig.full_recipe(epochs=300).epochs == 300


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epochs", 0, "epochs must be >= 1"),
        ("warmup_epochs", 30, "warmup_epochs must be in"),
        ("min_lr", 1.0, "min_lr <= learning_rate"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("drop_path_rate", -0.1, "drop_path_rate"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**{field: value})


def test_drop_path_rises_linearly_over_the_blocks_of_a_timm_model() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)
    assert not any(isinstance(m, DropPath) for m in model.modules())  # timm default: none
    blocks = set_drop_path_rate(model, 0.2)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert blocks == len(rates) + 1  # the first block gets rate 0 -> Identity
    np.testing.assert_allclose(rates, [0.2 * i / blocks for i in range(1, blocks)])
    set_drop_path_rate(model, 0.0)
    assert not any(isinstance(m, DropPath) for m in model.modules())


def _drop_path_slots(model: nn.Module) -> list[tuple[str, str, float | None]]:
    return [
        (name, type(module).__name__, getattr(module, "drop_prob", None))
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1].startswith("drop_path")
    ]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_drop_path_built_by_timm_equals_drop_path_set_on_the_built_model(rate: float) -> None:
    """timm's create_model(drop_path_rate=r) and set_drop_path_rate(model, r) give the same modules,
    weights and training forward pass: finetune's re-set of a built model is timm's rule."""
    torch.manual_seed(0)
    built = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=7, drop_path_rate=rate)
    torch.manual_seed(0)
    reset = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=7)
    assert set_drop_path_rate(reset, rate) == 16
    slots = _drop_path_slots(built)
    assert slots == _drop_path_slots(reset) and len(slots) == 16
    assert sum(kind == "DropPath" for _, kind, _ in slots) == (15 if rate else 0)
    built_state, reset_state = built.state_dict(), reset.state_dict()
    assert built_state.keys() == reset_state.keys()
    assert all(torch.equal(built_state[key], reset_state[key]) for key in built_state)
    images = torch.randn(4, 3, 32, 32)
    outputs = []
    for model in (built, reset):
        torch.manual_seed(1)  # the drop-path draws
        outputs.append(model.train()(images))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_drop_path_on_a_model_without_slots_is_an_error(small_cnn: Callable) -> None:
    with pytest.raises(ValueError, match="no drop_path slots"):
        set_drop_path_rate(small_cnn(3), 0.1)


def test_finetune_reduces_loss_and_beats_chance(digits_images, small_cnn: Callable) -> None:
    train, test = digits_images.train, digits_images.test
    result = finetune(small_cnn(10), train.paths, train.labels, mean=MEAN, std=STD, config=TINY, progress=False)
    losses = [epoch.loss for epoch in result.history]
    assert len(result.history) == TINY.epochs
    assert losses[-1] < 0.6 * losses[0]
    assert all(epoch.images_per_second > 0 for epoch in result.history)
    assert result.history[-1].lr < 0.1 * TINY.learning_rate  # cosine decayed to near the floor
    assert not result.model.training
    metrics = evaluate_finetuned(
        result.model,
        test.paths,
        test.labels,
        eval_transform(32, MEAN, STD, crop_pct=1.0),
        num_classes=10,
        progress=False,
    )
    assert metrics.accuracy > 0.6  # chance is 0.1
    assert metrics.num_samples == len(test.paths)


def test_finetune_is_deterministic_on_cpu_for_a_seed(digits_images, small_cnn: Callable) -> None:
    train = digits_images.train
    config = FinetuneConfig(**{**TINY.to_dict(), "epochs": 2, "warmup_epochs": 0})
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # identical initial weights
        model = small_cnn(10)
        result = finetune(
            model,
            train.paths[:128],
            train.labels[:128],
            mean=MEAN,
            std=STD,
            config=config,
            progress=False,
            device="cpu",
        )
        runs.append(result)
    assert [h.loss for h in runs[0].history] == [h.loss for h in runs[1].history]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)
    different_seed = FinetuneConfig(**{**config.to_dict(), "seed": 1})
    torch.manual_seed(123)
    other = finetune(
        small_cnn(10),
        train.paths[:128],
        train.labels[:128],
        mean=MEAN,
        std=STD,
        config=different_seed,
        progress=False,
        device="cpu",
    )
    assert [h.loss for h in other.history] != [h.loss for h in runs[0].history]


def test_finetune_rejects_a_head_too_small_and_single_class(digits_images, small_cnn) -> None:
    train = digits_images.train
    with pytest.raises(ValueError, match="outputs 5 classes but the labels go up to class index 9"):
        finetune(small_cnn(5), train.paths, train.labels, mean=MEAN, std=STD, config=TINY, progress=False)
    with pytest.raises(ValueError, match="single class"):
        finetune(small_cnn(10), train.paths[:4], [3, 3, 3, 3], mean=MEAN, std=STD, config=TINY, progress=False)
    with pytest.raises(ValueError, match="do not exist"):
        finetune(
            small_cnn(10),
            ["/nonexistent/a.png", "/nonexistent/b.png"],
            [0, 1],
            mean=MEAN,
            std=STD,
            config=TINY,
            progress=False,
        )


@pytest.mark.heavy  # ~20 s of CPU; benchmarks/finetune_speed.py runs the same backbone end to end
def test_pretrained_lite0_finetunes_on_digits(digits_images) -> None:
    """The real backbone with its packaged ImageNet weights, ten epochs at 64 px."""
    train, test = digits_images.train, digits_images.test
    config = FinetuneConfig(
        epochs=10,
        batch_size=32,
        learning_rate=0.05,
        warmup_epochs=1,
        image_size=64,
        crop_scale=(0.6, 1.0),
    )
    torch.manual_seed(0)  # the new head's initialisation
    result = finetune(
        create_classifier("tf_efficientnet_lite0", 10, "packaged"),
        train.paths[:256],
        train.labels[:256],
        mean=MEAN,
        std=STD,
        config=config,
        progress=False,
    )
    assert result.history[-1].loss < 0.6 * result.history[0].loss
    assert all(math.isfinite(h.loss) for h in result.history)
    metrics = evaluate_finetuned(
        result.model, test.paths[:300], test.labels[:300], eval_transform(64, MEAN, STD), num_classes=10, progress=False
    )
    assert metrics.accuracy > 0.7  # chance is 0.1
