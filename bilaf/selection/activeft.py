"""ActiveFT core selection (docs/algorithm.md §3): learn K unit anchors, map each to a distinct item.

The pool is cut into shards (``shards.shard_bounds``, a rule of the pool's shape alone). Every
iteration the driver sends the anchors to one task per shard; each returns, for its items, the
per-anchor partial sums of the gradient and of the loss; the driver adds them in shard order
(float64) and takes the Adam step. The tasks run where the ``Compute`` says (this process or a Dask
cluster) with one torch thread each, so the picks are the same wherever they ran.

A shard finds its items' owners without the items x anchors product: ``OwnerTracker`` keeps
similarity bounds between iterations, in the process that ran the shard last. The owners and the
similarities it returns are the ones a full search gives, to the bit (every compared value is the
same sampled dot product, ``_sampled_products``), so a shard whose bounds were lost (its worker
died, or another worker ran it) gives exactly the same sums.
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
from bilaf.compute import Compute, LocalCompute, Task, new_run_token, task_state
from bilaf.errors import InvalidInputError
from bilaf.progress import Progress

from ._geometry import best_items, device, l2_normalize, rows_per_block, scatter_rows
from .shards import FeatureRows, shard_bounds

LOSS_FORMS = choices.ACTIVEFT_LOSSES
FULL_BATCH_LIMIT = 100_000  # larger pools use a fresh random subset of this size per iteration
BOUND_ENTRY_LIMIT = 1 << 27  # a shard's items x anchors similarity bounds (512 MB); beyond: full search
CLAIM_SHORTLIST = 64  # best free items per anchor and shard kept for the map back to items
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
    source: FeatureRows,
    n_anchors: int,
    seed: int,
    params: ActiveFTParams,
    taken: np.ndarray | None = None,
    compute: Compute | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Optimise ``n_anchors`` anchors on the (L2-normalised) rows of ``source``; return items in
    anchor order + info.

    Anchors start at distinct random items (seeded), Adam with constant learning rate. Items
    marked in ``taken`` (labeled or pending in earlier rounds) are fixed anchors: they own items
    and repel the new anchors like any anchor, but never move and are never picked. The loss is
    local (an anchor follows the items it owns), so the new anchors start where the pool is not
    yet covered: drawn with probability proportional to the squared distance to the nearest
    anchor so far (k-means++ seeding), and new data unlike the old attracts them (docs/rounds.md).
    """
    compute = compute or LocalCompute()
    n_items = len(source)
    rng = np.random.default_rng(seed)
    fixed_rows = None if taken is None else np.flatnonzero(taken)
    n_every = n_anchors + (0 if fixed_rows is None else len(fixed_rows))
    pool = ShardedPool(source, compute, n_every, taken)
    try:
        fixed = None if fixed_rows is None else _unit_tensor(source.take(fixed_rows))
        start = rng.choice(n_items, n_anchors, replace=False) if taken is None else pool.seed_away(n_anchors, rng)
        anchors = torch.nn.Parameter(_unit_tensor(source.take(start)))
        optimizer = torch.optim.Adam([anchors], lr=params.learning_rate)
        batch_size = min(n_items, params.batch_size or min(n_items, FULL_BATCH_LIMIT))
        losses = []
        steps = Progress(range(params.n_iterations), "ActiveFT")
        for _ in steps:
            rows = None if batch_size == n_items else np.sort(rng.choice(n_items, batch_size, replace=False))
            surrogate, loss = _objective(anchors, fixed, params, pool.partial_sums, rows)
            optimizer.zero_grad(set_to_none=True)
            surrogate.backward()
            optimizer.step()
            losses.append(loss)
            steps.note(loss=loss)
        picks = pool.claim(F.normalize(anchors.detach(), dim=1))
    finally:
        pool.close()
    info: dict[str, Any] = {
        "batch_size": batch_size,
        "initial_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "shards": len(pool.bounds),
    }
    if fixed_rows is not None:
        info["fixed_anchors"] = len(fixed_rows)
    return picks, info


def _unit_tensor(block: np.ndarray) -> torch.Tensor:
    """Rows as unit float32 vectors, row by row (a row's value never depends on its neighbours)."""
    return torch.as_tensor(l2_normalize(block), device=device())


@dataclass
class PartialSums:
    """What one shard (or their sum) contributes to an iteration: the number of items, the sum of
    their per-item objective terms, and per anchor the weighted sum of its items (``attraction``)
    and of the weights (``weights``; only the "code" loss uses it)."""

    count: int
    objective: float
    attraction: np.ndarray
    weights: np.ndarray

    @classmethod
    def total(cls, parts: list[PartialSums]) -> PartialSums:
        """The sum of ``parts`` in their order, in float64 (the same order everywhere)."""
        attraction = np.zeros(parts[0].attraction.shape, dtype=np.float64)
        weights = np.zeros(parts[0].weights.shape, dtype=np.float64)
        count, objective = 0, 0.0
        for part in parts:
            count += part.count
            objective += part.objective
            attraction += part.attraction
            weights += part.weights
        return cls(count, objective, attraction, weights)


def _objective(
    anchors: torch.Tensor,
    fixed: torch.Tensor | None,
    params: ActiveFTParams,
    partial_sums: Any,
    rows: np.ndarray | None,
) -> tuple[torch.Tensor, float]:
    """(surrogate, loss): the surrogate's gradient in ``anchors`` is the loss's, from the pool's
    partial sums; the loss is the ActiveFT loss of the trainable anchors beside the fixed ones."""
    unit = F.normalize(anchors, dim=1)
    every = unit if fixed is None else torch.cat([unit, fixed])
    temperature = params.temperature
    log_negatives = None
    if params.loss == "code":
        # E_j = sum over l (self included) of exp(sg(mu_l) . mu_j / tau), in log space.
        log_negatives = torch.logsumexp(every.detach() @ every.T / temperature, dim=0)
    sums = partial_sums(every.detach(), None if log_negatives is None else log_negatives.detach(), params, rows)
    scale = sums.count * temperature
    surrogate = (torch.as_tensor(-sums.attraction / scale, dtype=every.dtype, device=every.device) * every).sum()
    loss = -sums.objective / sums.count
    if log_negatives is not None:
        weights = torch.as_tensor(sums.weights / sums.count, dtype=every.dtype, device=every.device)
        surrogate = surrogate + (weights * log_negatives).sum()
    elif len(every) > 1:
        # Repulsion of each trainable anchor from every other anchor, fixed ones included.
        anchor_logits = (unit @ every.T / temperature).masked_fill(
            torch.eye(len(unit), len(every), dtype=torch.bool, device=unit.device), -math.inf
        )
        repulsion = params.balance * torch.logsumexp(anchor_logits, dim=1).mean()
        surrogate = surrogate + repulsion
        loss += float(repulsion.detach())
    return surrogate, loss


def _loss(batch: torch.Tensor, anchors: torch.Tensor, params: ActiveFTParams, fixed: torch.Tensor | None = None):
    """The ActiveFT loss of ``anchors`` on the unit ``batch`` as one differentiable tensor: its value
    is the loss, its gradient the one the optimisation follows (for tests against the formulas)."""

    def in_process(every: torch.Tensor, log_negatives: torch.Tensor | None, settings: ActiveFTParams, rows: Any):
        return _shard_sums_of(batch, None, every, log_negatives, settings, None)

    surrogate, loss = _objective(anchors, fixed, params, in_process, None)
    return surrogate - surrogate.detach() + loss


class ShardedPool:
    """The driver's view of the pool's shards: every shard's tasks, and what the driver merges."""

    def __init__(self, source: FeatureRows, compute: Compute, n_anchors: int, taken: np.ndarray | None):
        self.source = source
        self.compute = compute
        self.run = new_run_token()
        self.bytes_per_row = 4 * (source.n_columns + n_anchors)
        self.bounds = shard_bounds(len(source), self.bytes_per_row)
        self.shards = [source.shard(start, stop) for start, stop in self.bounds]
        self.free = [
            None if taken is None else np.flatnonzero(~taken[start:stop]).astype(np.int64)
            for start, stop in self.bounds
        ]
        self.bounded = [(stop - start) * n_anchors <= BOUND_ENTRY_LIMIT for start, stop in self.bounds]

    def _tasks(self, name: str, function: Any, args_of: Any) -> list[Task]:
        return [
            Task(
                name=f"{name}-{shard}",
                function=function,
                args=args_of(shard),
                memory_bytes=(stop - start) * self.bytes_per_row,
                place=shard,
            )
            for shard, (start, stop) in enumerate(self.bounds)
        ]

    def partial_sums(
        self, every: torch.Tensor, log_negatives: torch.Tensor | None, params: ActiveFTParams, rows: np.ndarray | None
    ) -> PartialSums:
        """The whole pool's (or the batch ``rows``') partial sums, added in shard order."""
        shared = self.compute.share(
            (every.cpu().numpy(), None if log_negatives is None else log_negatives.cpu().numpy())
        )
        local_rows = [None] * len(self.bounds)
        if rows is not None:
            cuts = np.searchsorted(rows, [start for start, _ in self.bounds] + [self.bounds[-1][1]])
            local_rows = [rows[cuts[i] : cuts[i + 1]] - start for i, (start, _) in enumerate(self.bounds)]
        tasks = self._tasks(
            "activeft-step",
            _shard_sums,
            lambda shard: (self.run, shard, self.shards[shard], shared, params, local_rows[shard], self.bounded[shard]),
        )
        return PartialSums.total([part for part in self.compute.map(tasks) if part is not None])

    def seed_away(self, n_anchors: int, rng: np.random.Generator) -> np.ndarray:
        """``n_anchors`` distinct free items, each drawn by D^2 sampling against the fixed anchors and
        the items drawn before it (unit vectors: squared distance = 2 - 2 cos)."""
        fixed = self.compute.share(l2_normalize(self.source.take(np.flatnonzero(self._taken_mask()))))
        drawn: list[np.ndarray] = []
        picked: list[list[int]] = [[] for _ in self.bounds]
        totals = np.array(self._seed_step(range(len(self.bounds)), fixed, drawn, picked, None))
        starts = np.empty(n_anchors, dtype=np.int64)
        for position in range(n_anchors):
            shard, mode, offset = self._draw(totals, rng)
            (local,) = self._seed_step([shard], fixed, drawn, picked, (mode, offset))
            start = self.bounds[shard][0]
            starts[position] = start + local
            picked[shard].append(int(local))
            drawn.append(l2_normalize(self.source.take(starts[position : position + 1]))[0])
            totals = np.array(self._seed_step(range(len(self.bounds)), fixed, drawn, picked, None))
        return starts

    def _seed_step(
        self,
        shards: Any,
        fixed: Any,
        drawn: list[np.ndarray],
        picked: list[list[int]],
        locate: tuple[str, float] | None,
    ) -> list[Any]:
        """One seeding step on ``shards``: fold the latest drawn item into their distances (all of
        ``drawn`` where a shard lost its state), then their totals, or the located row."""
        shards = list(shards)
        first = {shard: max(0, len(drawn) - 1) for shard in shards}
        results: dict[int, Any] = {}
        while len(results) < len(shards):
            todo = [shard for shard in shards if shard not in results]
            tasks = [
                Task(
                    name=f"activeft-seed-{shard}",
                    function=_seed_task,
                    args=(
                        self.run,
                        shard,
                        self.shards[shard],
                        self.free[shard],
                        fixed,
                        first[shard],
                        drawn[first[shard] :],
                        np.array(picked[shard], dtype=np.int64),
                        locate,
                    ),
                    memory_bytes=(self.bounds[shard][1] - self.bounds[shard][0]) * self.bytes_per_row,
                    place=shard,
                )
                for shard in todo
            ]
            for shard, result in zip(todo, self.compute.map(tasks)):
                if isinstance(result, _StaleSeed):  # the shard's process lost its state: send everything
                    first[shard] = result.applied
                else:
                    results[shard] = result
        return [results[shard] for shard in shards]

    def _taken_mask(self) -> np.ndarray:
        mask = np.ones(len(self.source), dtype=bool)
        for (start, _), free in zip(self.bounds, self.free):
            mask[start + free] = False
        return mask

    @staticmethod
    def _draw(totals: np.ndarray, rng: np.random.Generator) -> tuple[int, str, float]:
        """(shard, how, where inside it) of an item drawn with probability proportional to its
        squared distance, uniformly among the free items when every distance is 0."""
        cumulative = np.cumsum(totals[:, 0])
        if cumulative[-1] <= 0:  # every free item sits on an anchor: fall back to uniform
            counts = np.cumsum(totals[:, 1].astype(np.int64))
            target = int(rng.integers(counts[-1]))
            shard = int(np.searchsorted(counts, target, side="right"))
            return shard, "uniform", float(target - (int(counts[shard - 1]) if shard else 0))
        target = rng.random() * cumulative[-1]
        shard = min(int(np.searchsorted(cumulative, target, side="right")), len(cumulative) - 1)
        while totals[shard, 0] <= 0:  # rounding at the very end: the last shard with weight
            shard -= 1
        return shard, "weighted", target - (float(cumulative[shard - 1]) if shard else 0.0)

    def claim(self, queries: torch.Tensor) -> np.ndarray:
        """Map each query, in query order, to its best free item not claimed by an earlier query (§3.4).

        Every shard sends its best ``CLAIM_SHORTLIST`` free items per query and a bound on the
        rest; a query whose merged list holds no unclaimed item above every bound asks every shard
        for its best unclaimed item. Ties go to the lower item.
        """
        n_free = sum(len(self.shards[s]) if free is None else len(free) for s, free in enumerate(self.free))
        if len(queries) > n_free:
            raise InvalidInputError(f"cannot map {len(queries)} queries to distinct items of a pool of {n_free}")
        shared = self.compute.share(queries.cpu().numpy())
        parts = self.compute.map(
            self._tasks(
                "activeft-claim",
                _shard_shortlist,
                lambda shard: (self.run, shard, self.shards[shard], self.free[shard], shared, self.bounds[shard][0]),
            )
        )
        ids = np.concatenate([part[0] for part in parts], axis=1)
        scores = np.concatenate([part[1] for part in parts], axis=1)
        bound = np.max(np.stack([part[2] for part in parts]), axis=0)
        claimed = np.zeros(len(self.source), dtype=bool)
        picks = np.empty(len(queries), dtype=np.int64)
        for query in range(len(queries)):
            order = np.lexsort((ids[query], -scores[query].astype(np.float64)))
            candidates, values = ids[query][order], scores[query][order]
            free = np.flatnonzero(~claimed[candidates])
            if free.size and values[free[0]] > bound[query]:
                choice = int(candidates[free[0]])
            else:
                choice = self._best_unclaimed(queries[query].cpu().numpy(), claimed)
            picks[query] = choice
            claimed[choice] = True
        return picks

    def _best_unclaimed(self, query: np.ndarray, claimed: np.ndarray) -> int:
        tasks = self._tasks(
            "activeft-claim-full",
            _shard_best_unclaimed,
            lambda shard: (
                self.run,
                shard,
                self.shards[shard],
                self.free[shard],
                query,
                np.flatnonzero(claimed[self.bounds[shard][0] : self.bounds[shard][1]]),
                self.bounds[shard][0],
            ),
        )
        best = [result for result in self.compute.map(tasks) if result is not None]
        return int(min(best, key=lambda pair: (-pair[0], pair[1]))[1])

    def close(self) -> None:
        self.compute.drop_state(self.run)


# --- what runs in a task (on a worker, or on a thread of this process) ---------------------------


def _shard_items(run: str, shard: int, rows: FeatureRows) -> torch.Tensor:
    """The shard's unit vectors, read once per process and run."""
    return task_state(run, ("items", shard), lambda: _unit_tensor(rows.read()))


def _shard_sums(
    run: str,
    shard: int,
    rows: FeatureRows,
    shared: tuple[np.ndarray, np.ndarray | None],
    params: ActiveFTParams,
    local_rows: np.ndarray | None,
    bounded: bool,
) -> PartialSums | None:
    if local_rows is not None and len(local_rows) == 0:
        return None
    items = _shard_items(run, shard, rows)
    every_np, negatives_np = shared
    every = torch.as_tensor(every_np, device=items.device)
    log_negatives = None if negatives_np is None else torch.as_tensor(negatives_np, device=items.device)
    tracker = None
    if bounded:
        tracker = task_state(run, ("owners", shard), lambda: OwnerTracker(len(items), len(every), items.device))
    batch = items if local_rows is None else items[torch.as_tensor(local_rows, device=items.device)]
    rows_t = None if local_rows is None else torch.as_tensor(local_rows, device=items.device)
    return _shard_sums_of(batch, rows_t, every, log_negatives, params, tracker)


@torch.no_grad()
def _shard_sums_of(
    batch: torch.Tensor,
    rows: torch.Tensor | None,
    every: torch.Tensor,
    log_negatives: torch.Tensor | None,
    params: ActiveFTParams,
    tracker: OwnerTracker | None,
) -> PartialSums:
    """One shard's partial sums: per item its owner and similarity, then per anchor the sums."""
    if tracker is None:
        similarity, owner = canonical_owners(batch, every)
    else:
        similarity, owner = tracker.owners(batch, rows, every)
    logits = similarity / params.temperature
    if log_negatives is None:  # "paper": the attraction term alone
        terms, weights = logits, torch.ones_like(logits)
    else:
        rival = math.log(params.balance) + log_negatives[owner]
        terms = logits - torch.logaddexp(logits, rival)
        weights = torch.sigmoid(rival - logits)  # minus the derivative of a term in its logit
    owner_np = owner.cpu().numpy()
    return PartialSums(
        count=len(batch),
        objective=float(np.sum(terms.double().cpu().numpy())),
        attraction=scatter_rows(owner, batch, weights, len(every)).cpu().numpy(),
        weights=np.bincount(owner_np, weights=weights.double().cpu().numpy(), minlength=len(every)),
    )


@dataclass(frozen=True)
class _StaleSeed:
    """A seeding task found fewer drawn items folded in than the step needs (its state was lost)."""

    applied: int


def _seed_task(
    run: str,
    shard: int,
    rows: FeatureRows,
    free: np.ndarray | None,
    fixed: np.ndarray,
    first: int,
    drawn: list[np.ndarray],
    picked: np.ndarray,
    locate: tuple[str, float] | None,
) -> tuple[float, int] | int | _StaleSeed:
    """Bring the shard's D^2 weights up to date with the drawn items ``first:`` (folding one twice
    changes nothing: a minimum), then return its (sum of weights, free items left), or the row at
    ``locate``."""
    items = _shard_items(run, shard, rows)
    state = task_state(run, ("seed", shard), lambda: _SeedState.start(items, free, fixed))
    if state.applied < first:
        return _StaleSeed(state.applied)
    for vector in drawn[state.applied - first :]:
        state.fold(items, vector)
    state.applied = max(state.applied, first + len(drawn))
    state.closest[picked] = 0.0
    state.available[picked] = False
    if locate is not None:
        return state.locate(*locate)
    return float(np.sum(state.closest)), int(np.count_nonzero(state.available))


class _SeedState:
    """A shard's D^2 weights during seeding: squared distance to the nearest anchor so far (0 for
    taken and drawn items), and how many drawn items are folded in."""

    def __init__(self, closest: np.ndarray, available: np.ndarray):
        self.closest = closest
        self.available = available
        self.applied = 0

    @classmethod
    def start(cls, items: torch.Tensor, free: np.ndarray | None, fixed: np.ndarray) -> _SeedState:
        _, best = top_owner(items, torch.as_tensor(fixed, device=items.device))
        closest = (2.0 - 2.0 * best).clamp_(min=0.0).double().cpu().numpy()
        available = np.ones(len(items), dtype=bool)
        if free is not None:
            available[:] = False
            available[free] = True
        closest[~available] = 0.0
        return cls(closest, available)

    def fold(self, items: torch.Tensor, vector: np.ndarray) -> None:
        to_new = (2.0 - 2.0 * (items @ torch.as_tensor(vector, device=items.device))).clamp_(min=0.0)
        np.minimum(self.closest, to_new.double().cpu().numpy(), out=self.closest)
        self.closest[~self.available] = 0.0

    def locate(self, mode: str, offset: float) -> int:
        if mode == "uniform":
            return int(np.flatnonzero(self.available)[int(offset)])
        cumulative = np.cumsum(self.closest)
        row = min(int(np.searchsorted(cumulative, offset, side="right")), len(cumulative) - 1)
        if self.closest[row] <= 0:  # rounding at the end: the last item with weight before it
            row = int(np.flatnonzero(self.closest[: row + 1] > 0)[-1])
        return row


def _shard_shortlist(
    run: str, shard: int, rows: FeatureRows, free: np.ndarray | None, queries: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query, the shard's best free items (pool rows), their scores and a bound on the rest."""
    items = _shard_items(run, shard, rows)
    candidates = items if free is None else items[torch.as_tensor(free, device=items.device)]
    if len(candidates) == 0:
        empty = np.empty((len(queries), 0))
        return empty.astype(np.int64), empty.astype(np.float32), np.full(len(queries), -np.inf, dtype=np.float32)
    ids, scores, bound = best_items(torch.as_tensor(queries, device=items.device), candidates, CLAIM_SHORTLIST, "dot")
    rows_of = np.arange(len(items)) if free is None else free
    return offset + rows_of[ids], scores, bound


def _shard_best_unclaimed(
    run: str,
    shard: int,
    rows: FeatureRows,
    free: np.ndarray | None,
    query: np.ndarray,
    claimed: np.ndarray,
    offset: int,
) -> tuple[float, int] | None:
    """The shard's best free item not yet claimed (score, pool row); ties to the lower row."""
    items = _shard_items(run, shard, rows)
    allowed = np.ones(len(items), dtype=bool) if free is None else np.isin(np.arange(len(items)), free)
    allowed[claimed] = False
    if not allowed.any():
        return None
    scores = (items @ torch.as_tensor(query, device=items.device)).cpu().numpy()
    scores[~allowed] = -np.inf
    best = int(np.argmax(scores))  # first maximum: the lower row
    return float(scores[best]), offset + best


@torch.no_grad()
def top_owner(batch: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, similarity) of every item by a plain search (the seeding's nearest fixed anchor)."""
    owner = torch.empty(len(batch), dtype=torch.long, device=batch.device)
    best = torch.empty(len(batch), dtype=batch.dtype, device=batch.device)
    step = rows_per_block(len(anchors))
    for start in range(0, len(batch), step):
        scores = batch[start : start + step] @ anchors.T
        best[start : start + step], owner[start : start + step] = scores.max(dim=1)
    return owner, best


@torch.no_grad()
def canonical_owners(batch: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item's owning anchor and their similarity, as the bounded search finds them: the
    highest ``_sampled_products`` value (a product's bits do not depend on what else is computed
    with it), lower anchor id on ties. A matmul shortlists the anchors within rounding of the best."""
    owner = torch.empty(len(batch), dtype=torch.long, device=batch.device)
    similarity = torch.empty(len(batch), dtype=batch.dtype, device=batch.device)
    step = rows_per_block(len(anchors))
    for start in range(0, len(batch), step):
        part = slice(start, start + step)
        scores = batch[part] @ anchors.T
        similarity[part], owner[part] = _exact_best(batch[part], anchors, scores)
    return similarity, owner


def _exact_best(batch: torch.Tensor, anchors: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From matmul ``scores``, the best anchor per row by exact sampled products (ties: lower id)."""
    best = scores.max(dim=1).values
    hit_rows, cols = (scores >= (best - _BOUND_SLACK)[:, None]).nonzero(as_tuple=True)
    row_starts = torch.zeros(len(batch) + 1, dtype=torch.long, device=batch.device)
    torch.cumsum(torch.bincount(hit_rows, minlength=len(batch)), 0, out=row_starts[1:])
    values = _sampled_products(batch, anchors, row_starts, cols)
    top = torch.full((len(batch),), -torch.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, hit_rows, values, reduce="amax", include_self=True)
    at_top = values == top[hit_rows]
    lowest = torch.full((len(batch),), len(anchors), dtype=torch.long, device=batch.device)
    lowest = lowest.scatter_reduce(0, hit_rows[at_top], cols[at_top], reduce="amin", include_self=True)
    return top, lowest


class OwnerTracker:
    """Each item's owning anchor over the iterations, exact, without the items x anchors product.

    Elkan's k-means bounds in cosine form: an anchor that moved by ``delta`` (Euclidean, unit
    vectors) changes a unit item's similarity to it by at most ``delta``. Every (item, anchor)
    pair keeps an upper bound of their similarity, stored minus the anchor's accumulated drift so
    that moving an anchor costs nothing per item. A step computes each item's similarity to its
    owner and, only for the pairs whose bound reaches it, the true similarity (a sampled matmul);
    the other anchors cannot own the item. The owner is the highest similarity, lower id on ties,
    exactly as ``canonical_owners`` finds it. An item seen for the first time gets that search.
    The bounds stay valid if the tracker misses iterations (drift adds up the moves it sees).
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
        best, first = _exact_best(batch, unit_anchors, scores)
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
    ``row_starts[i]:row_starts[i + 1]``), without gathering rows. A pair's value does not depend on
    the pattern, the batch or the thread count (tested): the one similarity every search compares."""
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
