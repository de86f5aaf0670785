"""What the open round knows, as the `round` stage recorded it: read by every stage after it."""

from __future__ import annotations

import dataclasses

from bilaf import artifacts, rounds
from bilaf.stages.paths import ProjectPaths


@dataclasses.dataclass(frozen=True)
class RoundKnowledge:
    """The open round as the `round` stage recorded it: its number, its inputs, the labeled items
    (id -> class name) and the pending ones (sent, not labeled)."""

    round: int
    pool_version: str
    labels_version: str
    labels_mode: str
    labeled: dict[str, str]
    pending: list[str]

    @classmethod
    def load(cls, paths: ProjectPaths) -> RoundKnowledge:
        state = artifacts.read_json(paths.output("round") / rounds.OPEN_NAME)
        return cls(
            round=int(state["round"]),
            pool_version=state["pool_version"],
            labels_version=state["labels_version"],
            labels_mode=state["labels"],
            labeled=dict(state["labeled"]),
            pending=list(state["pending"]),
        )
