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

from dagster_project import choices

from ._geometry import claim_items, device, scatter_rows, top_matches
from .progress import Progress

LOSS_FORMS = choices.ACTIVEFT_LOSSES
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


def activeft(unit_features: np.ndarray, n_anchors: int, seed: int, params: ActiveFTParams,
             taken: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Optimise ``n_anchors`` anchors on unit-norm features; return items in anchor order + info.

    Anchors start at distinct random items (seeded), Adam with constant learning rate. Items
    marked in ``taken`` (labeled or pending in earlier rounds) are fixed anchors: they own items
    and repel the new anchors like any anchor, but never move and are never picked. The loss is
    local (an anchor follows the items it owns), so the new anchors start where the pool is not
    yet covered: drawn with probability proportional to the squared distance to the nearest
    anchor so far (k-means++ seeding), and new data unlike the old attracts them (ROUNDS.md).
    """
    dev = device()
    items = torch.as_tensor(unit_features, dtype=torch.float32, device=dev)
    n_items = len(items)
    rng = np.random.default_rng(seed)
    if taken is None:
        fixed = None
        start = rng.choice(n_items, n_anchors, replace=False)
    else:
        fixed = items[torch.as_tensor(np.flatnonzero(taken), device=dev)]
        start = _seed_away_from(items, fixed, taken, n_anchors, rng)
    anchors = torch.nn.Parameter(items[torch.as_tensor(start, device=dev)].clone())
    optimizer = torch.optim.Adam([anchors], lr=params.learning_rate)
    batch_size = min(n_items, params.batch_size or min(n_items, FULL_BATCH_LIMIT))
    losses = []
    steps = Progress(range(params.n_iterations), "ActiveFT")
    for _ in steps:
        if batch_size == n_items:
            batch = items
        else:
            chosen = np.sort(rng.choice(n_items, batch_size, replace=False))
            batch = items[torch.as_tensor(chosen, device=dev)]
        loss = _loss(batch, anchors, params, fixed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        steps.note(loss=losses[-1])
    unit_anchors = F.normalize(anchors.detach(), dim=1)
    picks = claim_items(unit_anchors, items, metric="dot", exclude=taken)
    info = {"batch_size": batch_size, "initial_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None}
    if taken is not None:
        info["fixed_anchors"] = len(fixed)
    return picks, info


def _seed_away_from(items: torch.Tensor, fixed: torch.Tensor, taken: np.ndarray, n_anchors: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n_anchors`` distinct free items, each drawn by D^2 sampling against the fixed anchors and
    the items drawn before it (unit vectors: squared distance = 2 - 2 cos)."""
    _, best = top_matches(items, fixed, 1, "dot")
    closest = (2.0 - 2.0 * best[:, 0]).clamp_(min=0.0).double().cpu().numpy()
    closest[taken] = 0.0
    start = np.empty(n_anchors, dtype=np.int64)
    for position in range(n_anchors):
        cumulative = np.cumsum(closest)
        if cumulative[-1] <= 0:  # every free item sits on an anchor: fall back to uniform
            free = np.flatnonzero(~taken & ~np.isin(np.arange(len(closest)), start[:position]))
            start[position] = free[rng.integers(len(free))]
        else:
            start[position] = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")),
                                  len(closest) - 1)
        to_new = (2.0 - 2.0 * (items @ items[int(start[position])])).clamp_(min=0.0).double().cpu().numpy()
        closest = np.minimum(closest, to_new)
        closest[start[position]] = 0.0
    return start


def _loss(batch: torch.Tensor, anchors: torch.Tensor, params: ActiveFTParams,
          fixed: torch.Tensor | None = None) -> torch.Tensor:
    """The ActiveFT loss of the trainable ``anchors`` beside the unit ``fixed`` anchors (if any)."""
    unit_anchors = F.normalize(anchors, dim=1)
    every = unit_anchors if fixed is None else torch.cat([unit_anchors, fixed])
    similarity, owner = _owning_anchor(batch, every.detach())
    similarity = _OwnedSimilarity.apply(every, similarity, batch, owner)
    logits = similarity / params.temperature
    if params.loss == "code":
        # E_j = sum over l (self included) of exp(sg(mu_l) . mu_j / tau), in log space.
        log_negatives = torch.logsumexp(every.detach() @ every.T / params.temperature, dim=0)
        return -(logits - torch.logaddexp(logits, math.log(params.balance)
                                          + log_negatives[owner])).mean()
    n_anchors = len(every)
    if n_anchors == 1:
        return -logits.mean()
    # Repulsion of each trainable anchor from every other anchor, fixed ones included.
    anchor_logits = (unit_anchors @ every.T / params.temperature).masked_fill(
        torch.eye(len(unit_anchors), n_anchors, dtype=torch.bool, device=anchors.device), -math.inf)
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
