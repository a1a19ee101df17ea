"""Fixtures for every test directory."""

from vtk_testing import one_thread  # noqa: F401  (fixture)
