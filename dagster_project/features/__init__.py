"""Data, backbones and embeddings: everything between raw images and a feature matrix."""
from dagster_project.features.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    create_classifier,
    input_normalisation,
    load_backbone,
    resolve_device,
)
from dagster_project.features.datasets import (
    DEFAULT_TEST_SIZE,
    DEFAULT_TRAIN_SIZE,
    SOURCES,
    PoolDataset,
    PoolReport,
    build_transform,
    default_source_root,
    image_id,
    open_source,
    prepare_pool,
    read_manifest,
)
from dagster_project.features.embeddings import (
    DEFAULT_IMAGE_SIZE,
    EmbeddingInfo,
    Embeddings,
    embed_pool,
    load_embeddings,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_TEST_SIZE",
    "DEFAULT_TRAIN_SIZE",
    "SOURCES",
    "Backbone",
    "EmbeddingInfo",
    "Embeddings",
    "PoolDataset",
    "PoolReport",
    "build_transform",
    "create_classifier",
    "default_source_root",
    "input_normalisation",
    "embed_pool",
    "image_id",
    "load_backbone",
    "load_embeddings",
    "open_source",
    "prepare_pool",
    "read_manifest",
    "resolve_device",
]
