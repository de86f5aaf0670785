"""Annotation round trip: Label Studio tasks out, annotator files in, a versioned label store."""
from dagster_project.annotation.formats import AnnotationRow, AnnotatorFile, read_annotator_file
from dagster_project.annotation.label_studio import (document_root_for, label_studio_tasks, labeling_config,
                                                     local_files_url)
from dagster_project.annotation.store import (
    ImportReport,
    ensure_store,
    import_labels,
    labels_version,
    load_labels,
    round_file,
)

__all__ = [
    "AnnotationRow",
    "AnnotatorFile",
    "ImportReport",
    "document_root_for",
    "ensure_store",
    "import_labels",
    "label_studio_tasks",
    "labeling_config",
    "labels_version",
    "load_labels",
    "local_files_url",
    "read_annotator_file",
    "round_file",
]
