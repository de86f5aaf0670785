"""Data, backbones and embeddings: everything between raw images and a feature matrix."""

from bilaf.features.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    create_classifier,
    input_normalisation,
    load_backbone,
    resolve_device,
)
from bilaf.features.datasets import PoolDataset
from bilaf.features.embeddings import (
    DEFAULT_IMAGE_SIZE,
    EmbeddingInfo,
    Embeddings,
    embed_pool,
    load_embeddings,
)
from bilaf.features.images import UnreadableImageError, image_id, normalize_image
from bilaf.features.pool import (
    DEFAULT_TEST_SIZE,
    DEFAULT_TRAIN_SIZE,
    PoolReport,
    ingest_folder,
    pool_version,
    read_manifest,
    sync_pool,
)
from bilaf.features.sources import SOURCES, default_source_root, open_source
from bilaf.features.transforms import build_transform

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
    "UnreadableImageError",
    "build_transform",
    "create_classifier",
    "default_source_root",
    "input_normalisation",
    "embed_pool",
    "image_id",
    "ingest_folder",
    "load_backbone",
    "load_embeddings",
    "normalize_image",
    "open_source",
    "pool_version",
    "read_manifest",
    "resolve_device",
    "sync_pool",
]
