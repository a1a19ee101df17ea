"""Fixtures for every test directory, and the session check that tests leave the global registries as they were."""

from typing import Iterator

import pytest

from vtk_testing import foreign_registry_entries, one_thread, restore_converters  # noqa: F401  (fixtures)


@pytest.fixture(scope="session", autouse=True)
def _no_registry_leaks() -> Iterator[None]:
    """Error at the session's last teardown if a test left a model or converter in a global registry.

    Tests register throw-away models inside a fixture (``with vtk_testing.registered(...): yield``, or yield then
    ``registry.unregister``) and converters under the ``restore_converters`` fixture, so a failing test cleans up
    too.
    """
    yield
    leaks = foreign_registry_entries()
    if leaks:
        pytest.fail("tests left entries in the global registries: " + "; ".join(leaks), pytrace=False)
