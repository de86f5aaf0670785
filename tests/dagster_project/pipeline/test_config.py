"""params.yaml validation: every bad value, unknown or missing key is refused naming it, before compute."""

import copy
from pathlib import Path

import pytest
import yaml

from bilaf import defaults
from bilaf.config import OPTIONAL_SECTIONS, Params, load_params, params_from_mapping, validated_section
from bilaf.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[3]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def _with(**changes) -> dict:
    """The repository's params.yaml with some keys changed (section__key=value)."""
    raw = copy.deepcopy(RAW)
    for name, value in changes.items():
        section, key = name.split("__")
        raw[section][key] = value
    return raw


def test_repository_params_file_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    assert set(RAW) == {*Params.section_names(), *OPTIONAL_SECTIONS}
    for section in RAW:  # every key written out, none left to a silent default
        assert set(RAW[section]) == set(params.section(section))


def test_compute_says_where_not_what():
    """The compute section may be left out (in process), is in no lineage, and is checked when given."""
    assert "compute" not in Params.section_names()
    without = params_from_mapping({name: values for name, values in RAW.items() if name != "compute"})
    assert without.compute.scheduler == "local"
    with pytest.raises(ValueError, match="params: compute.embedding_cache is missing"):
        params_from_mapping({**RAW, "compute": {"scheduler": "tcp://127.0.0.1:1"}})
    with pytest.raises(ValueError, match="params: compute.workers is not a known key"):
        params_from_mapping({**RAW, "compute": {**RAW["compute"], "workers": 2}})


def test_the_schema_defaults_are_the_one_home_of_every_default():
    assert Params().boundary.penalty == defaults.PENALTY and Params().finetune.epochs == defaults.FINETUNE_EPOCHS
    from bilaf.selection import IdcParams
    from bilaf.training import FinetuneConfig

    assert IdcParams().n_neighbors == Params().denoise.n_neighbors
    config = FinetuneConfig()
    assert (config.epochs, config.image_size, config.batch_size, config.learning_rate) == (
        Params().finetune.epochs,
        Params().finetune.image_size,
        Params().finetune.batch_size,
        Params().finetune.lr,
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with(boundary__budget=-5), "boundary.budget must be >= 1, got -5"),
        (_with(boundary__penalty=0.9), "boundary.penalty must be >= 1, got 0.9"),
        (_with(boundary__budgte=10), "boundary.budgte is not a known key"),
        ({**RAW, "boundry": {"budget": 10}}, "boundry is not a known section"),
        (_with(core__n_cores=300, boundary__budget=250), "core.n_cores (300) must not exceed boundary.budget (250)"),
        (_with(boundary__budget=20_000), "boundary.budget (20000) must not exceed data.train_size (10000)"),
        (
            _with(data__train_size=None, boundary__budget=70_000),
            "boundary.budget (70000) must not exceed the 60000 train items of fashion-mnist",
        ),
        (_with(core__method="kmedoids"), "core.method must be one of"),
        (_with(boundary__budget="many"), "boundary.budget must be int, got 'many'"),
        (_with(boundary__budget=True), "boundary.budget must be int"),
        (_with(denoise__removal_ratio=1.0), "denoise.removal_ratio must be in [0, 1)"),
        (_with(boundary__penalty=float("inf")), "boundary.penalty must be a finite number, got inf"),
        (_with(finetune__lr=float("inf")), "finetune.lr must be a finite number, got inf"),
        (_with(finetune__lr=float("nan")), "finetune.lr must be a finite number, got nan"),
        (_with(denoise__ring_fraction=float("nan")), "denoise.ring_fraction must be a finite number, got nan"),
        (_with(data__source="image-folder"), "data.root is required"),
        (_with(later_rounds__method="margin", later_rounds__n_cores=5), "later_rounds.n_cores applies to method bilaf"),
        ({key: value for key, value in RAW.items() if key != "boundary"}, "section boundary is missing"),
        ({**RAW, "boundary": {"budget": 250}}, "boundary.penalty is missing (its default: 1.1)"),
        ({**RAW, "boundary": None}, "boundary must be a mapping"),
    ],
)
def test_invalid_parameters_are_refused_with_the_key_named(raw, message):
    with pytest.raises(ValueError) as error:
        params_from_mapping(raw)
    assert str(error.value).startswith("params: ") and message in str(error.value)


def test_section_hash_changes_only_for_the_changed_section():
    base = params_from_mapping(RAW)
    changed = params_from_mapping(_with(boundary__penalty=1.2))
    differing = [name for name in Params.section_names() if base.section_hash(name) != changed.section_hash(name)]
    assert differing == ["boundary"]


def test_integers_are_accepted_for_float_keys():
    assert params_from_mapping(_with(boundary__penalty=2)).boundary.penalty == 2.0


def test_missing_or_malformed_file_is_reported(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("boundary: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping of sections"):
        load_params(tmp_path / "params.yaml")


def test_a_section_read_back_from_a_record_is_checked_with_the_key_named():
    """`bilaf explain`/`reproduce` re-check the params an MLflow run recorded, one section at a time."""
    core = Params().core.model_dump()
    assert validated_section("core", core) == core
    with pytest.raises(InvalidInputError, match=r"params: core\.n_cores"):
        validated_section("core", {**core, "n_cores": "many"})
