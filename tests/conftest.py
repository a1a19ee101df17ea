"""Fixtures for every test directory, and the session check that tests leave the global registries as they were."""

from typing import Iterator

import pytest

from vtk_testing import foreign_registry_entries, one_thread  # noqa: F401  (fixtures)


@pytest.fixture(scope="session", autouse=True)
def _no_registry_leaks() -> Iterator[None]:
    """Error at the session's last teardown if a test left a model in a global registry.

    Tests register throw-away models inside a fixture (``with vtk_testing.registered(...): yield``, or yield then
    ``registry.unregister``), so a failing test cleans up too. (Converters have no global registry: each model
    passes its own tuple to the builder.)
    """
    yield
    leaks = foreign_registry_entries()
    if leaks:
        pytest.fail("tests left entries in the global registries: " + "; ".join(leaks), pytrace=False)
