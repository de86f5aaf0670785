"""Annotation round trip: Label Studio tasks out, annotator files in, a versioned label store."""

from bilaf.annotation.formats import AnnotationRow, AnnotatorFile, read_annotator_file
from bilaf.annotation.label_studio import document_root_for, label_studio_tasks, labeling_config, local_files_url
from bilaf.annotation.store import (
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
