"""The `legend` command line: a thin typer layer over the Python API (see legend.pipeline).

`legend.cli.app` holds the typer app; each command module registers its commands on it when
imported here.
"""

from __future__ import annotations

from legend.cli import align, core, quality, rewards
from legend.cli.app import app

__all__ = ["align", "app", "core", "main", "quality", "rewards"]


def main() -> None:
    """Entry point of the `legend` script."""
    app()
