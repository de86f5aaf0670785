"""What a round runs, decided in one place for ``select`` and the pipeline's selection stages.

A round is label-aware once its labels cover at least two classes: BiLAF then grows class regions
from them and a probe can be trained (margin sampling). Before that (round 1, or labels of one
class only) BiLAF is one-shot: coverage cores, IDC denoising and boundary picks on the free items
(neither labeled nor pending), its labeled and pending items kept as the cores' fixed anchors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import KnownItems, validate_known

ONE_SHOT = "one-shot"
MIN_LABELED_CLASSES = 2


def is_label_aware(known: KnownItems | None) -> bool:
    """Whether the labels cover enough classes for a label-aware round."""
    return known is not None and len(known.classes) >= MIN_LABELED_CLASSES


def round_strategy(n_items: int, labels: Any = None, pending: Any = None, *, method: str) -> str:
    """``method`` (the one chosen for later rounds) once the labels are label-aware, else
    ``ONE_SHOT`` (one-shot BiLAF around the labeled and pending items)."""
    return method if is_label_aware(validate_known(labels, pending, n_items)) else ONE_SHOT


def free_items(n_items: int, labels: Any = None, pending: Any = None) -> np.ndarray:
    """The items neither labeled nor pending, ascending: what a one-shot round picks from (pick
    on ``features[free]``, then ``SelectionResult.on_rows(free)`` names the picks as items)."""
    return free_of(validate_known(labels, pending, n_items), n_items)


def free_of(known: KnownItems | None, n_items: int) -> np.ndarray:
    """``free_items`` of already validated knowledge."""
    return np.arange(n_items, dtype=np.int64) if known is None else np.flatnonzero(~known.taken)
