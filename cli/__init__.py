"""The ``vtk`` command-line interface (Typer). Entry point: :func:`cli.main.main`."""
