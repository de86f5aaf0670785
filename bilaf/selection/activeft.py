"""ActiveFT core selection (ALGORITHM.md §3): learn K unit anchors, map each to a distinct item.

The pool similarity block is never kept for autograd: the owner of every item is found without
gradient and the attraction gradient is scattered onto the owning anchors, which is exactly the
gradient of the official code's ``max`` over the similarity matrix. Owners are tracked across
iterations with similarity bounds (``OwnerTracker``), so a step costs a few passes over the pool
instead of the full items x anchors product.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bilaf import choices
from bilaf.errors import InvalidInputError
from bilaf.progress import Progress

from ._geometry import claim_items, device, rows_per_block, scatter_rows, top_matches

LOSS_FORMS = choices.ACTIVEFT_LOSSES
FULL_BATCH_LIMIT = 100_000  # larger pools use a fresh random subset of this size per iteration
BOUND_ENTRY_LIMIT = 1 << 27  # items x anchors similarity bounds kept (512 MB); beyond: full search
_BOUND_SLACK = 1e-4  # covers float32 rounding of unit dot products and of the accumulated drift


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
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < math.inf:
                raise InvalidInputError(f"{name} must be a positive number; got {value!r}")
        if self.loss not in LOSS_FORMS:
            raise InvalidInputError(f"loss must be one of {LOSS_FORMS}; got {self.loss!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {value!r}")


def activeft(
    unit_features: np.ndarray, n_anchors: int, seed: int, params: ActiveFTParams, taken: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
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
    n_every = n_anchors + (0 if fixed is None else len(fixed))
    tracker = OwnerTracker(n_items, n_every, dev) if n_items * n_every <= BOUND_ENTRY_LIMIT else None
    losses = []
    steps = Progress(range(params.n_iterations), "ActiveFT")
    for _ in steps:
        if batch_size == n_items:
            batch, rows = items, None
        else:
            rows = torch.as_tensor(np.sort(rng.choice(n_items, batch_size, replace=False)), device=dev)
            batch = items[rows]
        loss = _loss(batch, anchors, params, fixed, tracker, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        steps.note(loss=losses[-1])
    unit_anchors = F.normalize(anchors.detach(), dim=1)
    picks = claim_items(unit_anchors, items, metric="dot", exclude=taken)
    info = {
        "batch_size": batch_size,
        "initial_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
    }
    if taken is not None:
        info["fixed_anchors"] = len(fixed)
    return picks, info


def _seed_away_from(
    items: torch.Tensor, fixed: torch.Tensor, taken: np.ndarray, n_anchors: int, rng: np.random.Generator
) -> np.ndarray:
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
            start[position] = min(
                int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(closest) - 1
            )
        to_new = (2.0 - 2.0 * (items @ items[int(start[position])])).clamp_(min=0.0).double().cpu().numpy()
        closest = np.minimum(closest, to_new)
        closest[start[position]] = 0.0
    return start


def _loss(
    batch: torch.Tensor,
    anchors: torch.Tensor,
    params: ActiveFTParams,
    fixed: torch.Tensor | None = None,
    tracker: OwnerTracker | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ActiveFT loss of the trainable ``anchors`` beside the unit ``fixed`` anchors (if any).

    ``batch`` holds the pool items ``rows`` (None: the whole pool, in order); a ``tracker`` finds
    their owners from its bounds, else a full search does.
    """
    unit_anchors = F.normalize(anchors, dim=1)
    every = unit_anchors if fixed is None else torch.cat([unit_anchors, fixed])
    if tracker is None:
        similarity, owner = _owning_anchor(batch, every.detach())
    else:
        similarity, owner = tracker.owners(batch, rows, every.detach())
    similarity = _OwnedSimilarity.apply(every, similarity, batch, owner)
    logits = similarity / params.temperature
    if params.loss == "code":
        # E_j = sum over l (self included) of exp(sg(mu_l) . mu_j / tau), in log space.
        log_negatives = torch.logsumexp(every.detach() @ every.T / params.temperature, dim=0)
        return -(logits - torch.logaddexp(logits, math.log(params.balance) + log_negatives[owner])).mean()
    n_anchors = len(every)
    if n_anchors == 1:
        return -logits.mean()
    # Repulsion of each trainable anchor from every other anchor, fixed ones included.
    anchor_logits = (unit_anchors @ every.T / params.temperature).masked_fill(
        torch.eye(len(unit_anchors), n_anchors, dtype=torch.bool, device=anchors.device), -math.inf
    )
    return -logits.mean() + params.balance * torch.logsumexp(anchor_logits, dim=1).mean()


@torch.no_grad()
def _owning_anchor(batch: torch.Tensor, unit_anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Highest similarity of each item to any anchor and that anchor (lower id on ties)."""
    owner, similarity = top_matches(batch, unit_anchors, 1, "dot")
    return similarity[:, 0], owner[:, 0]


class OwnerTracker:
    """Each item's owning anchor over the iterations, exact, without the items x anchors product.

    Elkan's k-means bounds in cosine form: an anchor that moved by ``delta`` (Euclidean, unit
    vectors) changes a unit item's similarity to it by at most ``delta``. Every (item, anchor)
    pair keeps an upper bound of their similarity, stored minus the anchor's accumulated drift so
    that moving an anchor costs nothing per item. A step computes each item's similarity to its
    owner and, only for the pairs whose bound reaches it, the true similarity (a sampled matmul);
    the other anchors cannot own the item. The owner is the highest similarity, lower id on ties,
    as in a full search. An item seen for the first time gets the full search.
    """

    def __init__(self, n_items: int, n_anchors: int, dev: torch.device):
        self.bounds = torch.empty((n_items, n_anchors), device=dev)
        self.owner = torch.full((n_items,), -1, dtype=torch.long, device=dev)
        self.drift = torch.zeros(n_anchors, device=dev)
        self._previous: torch.Tensor | None = None
        self._buffer = torch.empty(0, device=dev)

    def _scratch(self, shape: torch.Size) -> torch.Tensor:
        """A reused block for the bound test (fresh large allocations cost page faults each step)."""
        if self._buffer.numel() < shape.numel():
            self._buffer = torch.empty(shape.numel(), device=self._buffer.device)
        return self._buffer[: shape.numel()].view(shape)

    @torch.no_grad()
    def owners(
        self, batch: torch.Tensor, rows: torch.Tensor | None, unit_anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarity to the owner, owner) of the items ``rows`` (None: all) given as ``batch``."""
        if self._previous is not None:
            self.drift += torch.linalg.vector_norm(unit_anchors - self._previous, dim=1)
        self._previous = unit_anchors.clone()
        bounds = self.bounds if rows is None else self.bounds[rows]
        owner = self.owner if rows is None else self.owner[rows]
        similarity = torch.empty(len(batch), dtype=batch.dtype, device=batch.device)
        step = rows_per_block(len(unit_anchors))
        for start in range(0, len(batch), step):
            part = slice(start, start + step)
            if bool((owner[part] < 0).any()):
                self._search(batch[part], unit_anchors, bounds[part], owner[part], similarity[part])
            else:
                self._refine(batch[part], unit_anchors, bounds[part], owner[part], similarity[part])
        if rows is not None:
            self.bounds[rows] = bounds
            self.owner[rows] = owner
        return similarity, owner.clone()

    def _search(
        self,
        batch: torch.Tensor,
        unit_anchors: torch.Tensor,
        bounds: torch.Tensor,
        owner: torch.Tensor,
        similarity: torch.Tensor,
    ) -> None:
        """Full search: every similarity becomes its own bound."""
        scores = batch @ unit_anchors.T
        best, first = scores.max(dim=1)  # first maximum: lower id
        owner.copy_(first)
        similarity.copy_(best)
        torch.sub(scores, self.drift, out=bounds)

    def _refine(
        self,
        batch: torch.Tensor,
        unit_anchors: torch.Tensor,
        bounds: torch.Tensor,
        owner: torch.Tensor,
        similarity: torch.Tensor,
    ) -> None:
        """Owners from the bounds: only the pairs that might beat the current owner are computed."""
        n_rows = len(batch)
        own = _sampled_products(batch, unit_anchors, torch.arange(n_rows + 1, device=batch.device), owner)
        reach = torch.add(bounds, self.drift, out=self._scratch(bounds.shape))
        reach.scatter_(1, owner[:, None], -torch.inf)
        hit_rows, cols = (reach >= (own - _BOUND_SLACK)[:, None]).nonzero(as_tuple=True)
        similarity.copy_(own)
        if len(cols) == 0:
            return
        row_starts = torch.zeros(n_rows + 1, dtype=torch.long, device=batch.device)
        torch.cumsum(torch.bincount(hit_rows, minlength=n_rows), 0, out=row_starts[1:])
        values = _sampled_products(batch, unit_anchors, row_starts, cols)
        bounds[hit_rows, cols] = values - self.drift[cols]
        best = own.scatter_reduce(0, hit_rows, values, reduce="amax", include_self=True)
        at_best = values == best[hit_rows]
        lowest = torch.full_like(owner, len(unit_anchors)).scatter_reduce(
            0, hit_rows[at_best], cols[at_best], reduce="amin", include_self=True
        )
        keep_owner = (own == best) & (owner < lowest)
        new_owner = torch.where(keep_owner, owner, lowest)
        moved = torch.nonzero(new_owner != owner).flatten()
        bounds[moved, owner[moved]] = own[moved] - self.drift[owner[moved]]
        owner.copy_(new_owner)
        similarity.copy_(best)


def _sampled_products(
    batch: torch.Tensor, keys: torch.Tensor, row_starts: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``batch[i] . keys[cols[j]]`` for the pairs of a CSR pattern (row i owns the entries
    ``row_starts[i]:row_starts[i + 1]``), without gathering rows."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is tested here
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            row_starts,
            cols,
            torch.zeros(len(cols), dtype=batch.dtype, device=batch.device),
            (len(batch), len(keys)),
            check_invariants=False,
        )
        return torch.sparse.sampled_addmm(pattern, batch, keys.T, beta=0.0).values()


class _OwnedSimilarity(torch.autograd.Function):
    """Identity on precomputed similarities whose gradient flows to each item's owning anchor."""

    @staticmethod
    def forward(
        ctx: Any, unit_anchors: torch.Tensor, similarity: torch.Tensor, items: torch.Tensor, owner: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(items, owner)
        ctx.n_anchors = len(unit_anchors)
        return similarity.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        items, owner = ctx.saved_tensors
        return scatter_rows(owner, items, grad, ctx.n_anchors), None, None, None
