"""Label Studio tasks (local-files URLs under a document root) and the labeling config."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree

import pytest
from annotation_project import CLASSES

from bilaf.annotation import document_root_for, label_studio_tasks, labeling_config


def test_tasks_point_at_local_files_under_the_document_root(tmp_path):
    image = tmp_path / "data" / "images" / "my train" / "a#1.png"
    rows = [
        {
            "rank": 0,
            "id": "00ff",
            "path": "images/my train/a#1.png",
            "role": "core",
            "cluster": 3,
            "boundary_score": math.nan,
        }
    ]
    (task,) = label_studio_tasks(rows, {"00ff": image}, tmp_path)
    assert task == {
        "data": {
            "image": "/data/local-files/?d=data/images/my%20train/a%231.png",
            "item_id": "00ff",
            "rank": 0,
            "role": "core",
            "cluster": 3,
            "boundary_score": None,
        }
    }
    assert label_studio_tasks(rows, {"00ff": image}, tmp_path / "data")[0]["data"]["image"] == (
        "/data/local-files/?d=images/my%20train/a%231.png"
    )


def test_an_image_outside_the_document_root_says_to_set_it(tmp_path):
    rows = [{"rank": 0, "id": "00ff", "role": "core", "cluster": 0}]
    with pytest.raises(ValueError, match=r"outside the Label Studio document root .*--document-root DIR"):
        label_studio_tasks(rows, {"00ff": tmp_path / "elsewhere" / "a.png"}, tmp_path / "project")
    with pytest.raises(ValueError, match="no image path for 1 batch id"):
        label_studio_tasks(rows, {}, tmp_path)


def test_the_document_root_is_the_project_unless_an_image_lies_outside_it(tmp_path):
    project = tmp_path / "work" / "project"
    inside = [project / "data" / "images" / "a.png", project / "incoming" / "b.jpg"]
    assert document_root_for(inside, project) == project
    outside = [*inside, tmp_path / "work" / "photos" / "cats" / "c.jpg"]
    assert document_root_for(outside, project) == tmp_path / "work"
    tasks = label_studio_tasks(
        [{"rank": 0, "id": "c", "role": "boundary"}], {"c": outside[-1]}, document_root_for(outside, project)
    )
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=photos/cats/c.jpg"


def test_labeling_config_is_single_choice_named_label_over_the_classes():
    view = ElementTree.fromstring(labeling_config(CLASSES))
    (image,) = view.iter("Image")
    (choices,) = view.iter("Choices")
    assert (image.get("name"), image.get("value")) == ("image", "$image")
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == ("label", "image", "single")
    assert [choice.get("value") for choice in choices.iter("Choice")] == CLASSES
    with pytest.raises(ValueError, match="at least one class"):
        labeling_config([])
