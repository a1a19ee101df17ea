"""vtk's benchmarks: each module has ``main(argv)`` and runs as ``vtk bench ...`` or ``python -m benchmarks.NAME``.

Every benchmark measures vtk against its reference side by side in one process and prints ratios.
"""
