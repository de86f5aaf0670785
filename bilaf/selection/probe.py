"""The linear probe that label-aware selection learns from the labels of earlier rounds.

Multinomial logistic regression on L2-normalised features, C = 10, deterministic L-BFGS: the
same recipe `bilaf.training.linear_probe` scores selections with, so a round picks
where the learner it is judged by is unsure.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bilaf.errors import InvalidInputError

from ._geometry import l2_normalize

INVERSE_REGULARIZATION = 10.0
MAX_ITER = 1000
_PREDICT_ROWS = 1 << 15


def fit_probe(unit_features: np.ndarray, labels: np.ndarray, *, balanced: bool = False) -> LogisticRegression:
    """Fit the probe on labeled unit features. ``balanced`` weighs every class equally, for when
    the class proportions of the labels say more about earlier rounds' picks than about the pool.
    Single-threaded BLAS: the fits are small, and on busy cores spinning BLAS threads turned a
    0.2 s fit into 12 s."""
    if np.unique(labels).size < 2:
        raise InvalidInputError("the labels hold a single class; a probe needs at least two")
    classifier = LogisticRegression(
        C=INVERSE_REGULARIZATION, max_iter=MAX_ITER, class_weight="balanced" if balanced else None
    )
    with threadpool_limits(limits=1):
        classifier.fit(unit_features, labels)
    return classifier


def class_probabilities(
    features: np.ndarray, labeled: np.ndarray, labels: np.ndarray, rows: np.ndarray, *, balanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Probe trained on ``features[labeled]`` with ``labels``; returns (classes, probabilities of
    ``features[rows]``, one column per class in ``classes`` order)."""
    classifier = fit_probe(l2_normalize(features[labeled]), labels, balanced=balanced)
    probabilities = (
        np.concatenate(
            [
                classifier.predict_proba(l2_normalize(features[rows[start : start + _PREDICT_ROWS]]))
                for start in range(0, len(rows), _PREDICT_ROWS)
            ]
        )
        if len(rows)
        else np.empty((0, len(classifier.classes_)))
    )
    return classifier.classes_.astype(np.int64), probabilities
