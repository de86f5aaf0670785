"""Where every stage reads and writes inside one project folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bilaf import artifacts
from bilaf.config import PARAMS_FILE
from bilaf.stages.table import SOURCE_PATHS, STAGES


@dataclasses.dataclass(frozen=True)
class ProjectPaths:
    """Where every stage reads and writes, relative to one project folder."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def data(self) -> Path:
        return self.root / SOURCE_PATHS["pool"]

    @property
    def labels(self) -> Path:
        return self.root / SOURCE_PATHS["labels"]

    @property
    def embedding_cache(self) -> Path:
        return self.root / ".cache" / "embeddings"

    def output(self, stage: str) -> Path:
        return self.root / STAGES[stage].output


def resolve_image(paths: ProjectPaths, manifest_path: str) -> Path:
    """A manifest path is relative to data/ (copies, files inside the project) or absolute."""
    return paths.data / manifest_path


def pool_unreadable(paths: ProjectPaths) -> list[dict[str, str]]:
    """The files the pool's last sync or ingest could not read (origin and reason), from its report."""
    report = paths.data / "pool_report.json"
    return artifacts.read_json(report)["unreadable"] if report.is_file() else []
