"""Guards shared by every test of the Dagster layer."""

import pytest
from dagster._core.storage.defs_state.base import DefsStateStorage


@pytest.fixture(autouse=True)
def no_dead_dagster_instance_is_current():
    """An entered DagsterInstance (an evaluation context's, say) makes its defs-state storage the
    process's current one until it is exited. One left open by an earlier test is exited later by
    garbage collection, which can put back a storage whose instance is gone; the next in-process run
    then fails to load definitions ("Attempted to resolve undefined DagsterInstance weakref"), far
    from the cause. Caught here, at the first test that would inherit it. `DefsStateStorage.get` and
    `_instance_weakref` are Dagster 1.13's internals: there is no public way to ask."""
    storage = DefsStateStorage.get()
    if storage is not None and storage._instance_weakref is not None and storage._instance_weakref() is None:
        pytest.fail(
            "an earlier test left a Dagster context open (use build_*_context(...) as a context manager): "
            "the current defs-state storage belongs to an instance that no longer exists"
        )
    yield
