"""The asset keys of the sources (each params.yaml section, the pool, the labels), apart from the
assets that define them, so the planner and the assets both import them without a cycle."""

import dagster as dg

POOL_KEY = dg.AssetKey("pool")
LABELS_KEY = dg.AssetKey("labels")
# The pool observation's metadata key: the configured source's fingerprint when it was last synced.
SOURCE_FINGERPRINT = "source_fingerprint"


def params_key(section: str) -> dg.AssetKey:
    return dg.AssetKey(["params", section])


def source_key(source: str) -> dg.AssetKey:
    return {"pool": POOL_KEY, "labels": LABELS_KEY}[source]
