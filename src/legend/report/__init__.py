"""The HTML report on an annotated dataset's margins (layer 5): `build` writes it, `figures` draws, `page` renders.

`build_report` writes one self-contained page (its figures embedded as base64) and the figures as
PNGs in a hidden folder beside it (`.<page name>.figures/`), so a report written into a dataset
folder does not make `datasets.load_dataset(folder)` read images.
"""

from .build import ReportResult, build_report, read_direction_config, read_sidecar
from .figures import figure_png, plot_agreement, plot_length, plot_margins, plot_sweep, sweep_rows
from .page import render_page, snippet

__all__ = [
    "ReportResult",
    "build_report",
    "figure_png",
    "plot_agreement",
    "plot_length",
    "plot_margins",
    "plot_sweep",
    "read_direction_config",
    "read_sidecar",
    "render_page",
    "snippet",
    "sweep_rows",
]
