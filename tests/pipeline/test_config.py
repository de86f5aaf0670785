"""params.yaml validation: every bad value is refused with a message naming it, before compute."""
from pathlib import Path

import pytest
import yaml

from dagster_project.config import Params, load_params, params_from_mapping

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_file_is_valid_and_complete():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    assert set(raw) == set(Params.section_names())
    for section in Params.section_names():  # every key written out, none left to a silent default
        assert set(raw[section]) == set(params.section(section))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"boundary": {"budget": -5}}, "boundary.budget must be >= 1"),
        ({"boundary": {"penalty": 0.9}}, "boundary.penalty must be >= 1"),
        ({"boundary": {"budgte": 10}}, "boundary.budgte is not a known key"),
        ({"boundry": {"budget": 10}}, "boundry is not a known section"),
        ({"core": {"n_cores": 300}, "boundary": {"budget": 250}}, "core.n_cores (300) must not exceed boundary.budget"),
        ({"boundary": {"budget": 20_000}}, "boundary.budget (20000) must not exceed data.train_size"),
        ({"core": {"method": "kmedoids"}}, "core.method must be one of"),
        ({"boundary": {"budget": "many"}}, "boundary.budget must be int"),
        ({"boundary": {"budget": True}}, "boundary.budget must be int"),
        ({"denoise": {"removal_ratio": 1.0}}, "denoise.removal_ratio must be in [0, 1)"),
        ({"data": {"source": "image-folder"}}, "data.root is required"),
    ],
)
def test_invalid_parameters_are_refused_with_the_key_named(raw, message):
    with pytest.raises(ValueError) as error:
        params_from_mapping(raw)
    assert message in str(error.value)


def test_section_hash_changes_only_for_the_changed_section():
    base = params_from_mapping({})
    changed = params_from_mapping({"boundary": {"penalty": 1.2}})
    differing = [name for name in Params.section_names() if base.section_hash(name) != changed.section_hash(name)]
    assert differing == ["boundary"]


def test_integers_are_accepted_for_float_keys():
    assert params_from_mapping({"boundary": {"penalty": 2}}).boundary.penalty == 2.0


def test_missing_or_malformed_file_is_reported(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("boundary: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
