"""ActiveFT core selection (ALGORITHM.md §3): learn K unit anchors, map each to a distinct item.

The pool similarity block is never kept for autograd: the owner of every item is found without
gradient, chunk by chunk, and the attraction gradient is scattered onto the owning anchors, which
is exactly the gradient of the official code's ``max`` over the similarity matrix.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._geometry import claim_items, device, scatter_rows, top_matches

LOSS_FORMS = ("code", "paper")
FULL_BATCH_LIMIT = 100_000  # larger pools use a fresh random subset of this size per iteration


@dataclass(frozen=True)
class ActiveFTParams:
    """Optimisation settings; defaults are the official CIFAR/ImageNet scripts' (§3.3).

    loss: "code" = the released per-item InfoNCE-style loss (§3.2), "paper" = Eq. 10 (§3.1).
    batch_size: items per iteration; None = the whole pool up to ``FULL_BATCH_LIMIT`` items, else
        a random subset of that size drawn anew every iteration (the ImageNet script).
    """

    n_iterations: int = 300
    learning_rate: float = 1e-3
    temperature: float = 0.07
    balance: float = 1.0
    loss: str = "code"
    batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_int("n_iterations", self.n_iterations, minimum=0)
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, minimum=1)
        for name in ("learning_rate", "temperature", "balance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if self.loss not in LOSS_FORMS:
            raise ValueError(f"loss must be one of {LOSS_FORMS}; got {self.loss!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def activeft(unit_features: np.ndarray, n_anchors: int, seed: int,
             params: ActiveFTParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Optimise ``n_anchors`` anchors on unit-norm features; return items in anchor order + info.

    Anchors start at distinct random items (seeded), Adam with constant learning rate.
    """
    dev = device()
    items = torch.as_tensor(unit_features, dtype=torch.float32, device=dev)
    n_items = len(items)
    rng = np.random.default_rng(seed)
    start_items = torch.as_tensor(rng.choice(n_items, n_anchors, replace=False), device=dev)
    anchors = torch.nn.Parameter(items[start_items].clone())
    optimizer = torch.optim.Adam([anchors], lr=params.learning_rate)
    batch_size = min(n_items, params.batch_size or min(n_items, FULL_BATCH_LIMIT))
    losses = []
    for _ in tqdm(range(params.n_iterations), desc="ActiveFT", disable=None, leave=False):
        if batch_size == n_items:
            batch = items
        else:
            chosen = np.sort(rng.choice(n_items, batch_size, replace=False))
            batch = items[torch.as_tensor(chosen, device=dev)]
        loss = _loss(batch, anchors, params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    unit_anchors = F.normalize(anchors.detach(), dim=1)
    picks = claim_items(unit_anchors, items, metric="dot")
    info = {"batch_size": batch_size, "initial_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None}
    return picks, info


def _loss(batch: torch.Tensor, anchors: torch.Tensor, params: ActiveFTParams) -> torch.Tensor:
    unit_anchors = F.normalize(anchors, dim=1)
    similarity, owner = _owning_anchor(batch, unit_anchors.detach())
    similarity = _OwnedSimilarity.apply(unit_anchors, similarity, batch, owner)
    logits = similarity / params.temperature
    if params.loss == "code":
        # E_j = sum over l (self included) of exp(sg(mu_l) . mu_j / tau), in log space.
        log_negatives = torch.logsumexp(unit_anchors.detach() @ unit_anchors.T
                                        / params.temperature, dim=0)
        return -(logits - torch.logaddexp(logits, math.log(params.balance)
                                          + log_negatives[owner])).mean()
    n_anchors = len(unit_anchors)
    if n_anchors == 1:
        return -logits.mean()
    anchor_logits = (unit_anchors @ unit_anchors.T / params.temperature).masked_fill(
        torch.eye(n_anchors, dtype=torch.bool, device=anchors.device), -math.inf)
    return -logits.mean() + params.balance * torch.logsumexp(anchor_logits, dim=1).mean()


@torch.no_grad()
def _owning_anchor(batch: torch.Tensor, unit_anchors: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Highest similarity of each item to any anchor and that anchor (lower id on ties)."""
    owner, similarity = top_matches(batch, unit_anchors, 1, "dot")
    return similarity[:, 0], owner[:, 0]


class _OwnedSimilarity(torch.autograd.Function):
    """Identity on precomputed similarities whose gradient flows to each item's owning anchor."""

    @staticmethod
    def forward(ctx: Any, unit_anchors: torch.Tensor, similarity: torch.Tensor,
                items: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(items, owner)
        ctx.n_anchors = len(unit_anchors)
        return similarity.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        items, owner = ctx.saved_tensors
        return scatter_rows(owner, items, grad, ctx.n_anchors), None, None, None
