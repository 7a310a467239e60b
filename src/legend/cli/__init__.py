"""The `legend` command line: a thin typer layer over the Python API (see legend.pipeline).

`legend.cli.app` holds the typer app; each command module registers its commands on it when
imported here. Plugins (modules named by the `legend.plugins` entry-point group, which register
poolings, estimators, encoders, engines or layouts) are imported first, so the commands offer them
and their help lists them.
"""

from __future__ import annotations

from legend.cli.app import app, load_plugins

load_plugins()

from legend.cli import align, core, quality, rewards  # noqa: E402 -- after the plugins have registered

__all__ = ["align", "app", "core", "main", "quality", "rewards"]


def main() -> None:
    """Entry point of the `legend` script."""
    app()
