"""The `legend` command line: a thin typer layer over the Python API (see legend.pipeline).

`legend.cli.app` holds the typer app; each command module registers its commands on it when
imported here. Plugins (modules named by the `legend.plugins` entry-point group, which register
poolings, estimators, encoders, engines or layouts) are imported first, so the commands offer them
and their help lists them.
"""

from __future__ import annotations

from legend.cli.app import app, load_plugins

load_plugins()

# After the plugins have registered; in this order, which is the order `legend --help` lists the commands in.
# isort: off
from legend.cli import align, core, annotate, demo, quality, rewards  # noqa: E402
# isort: on

__all__ = ["align", "annotate", "app", "core", "demo", "main", "quality", "rewards"]


def main() -> None:
    """Entry point of the `legend` script."""
    keep_freed_memory()
    app()


def keep_freed_memory() -> bool:
    """Let this process's malloc keep freed memory for reuse instead of returning it to the OS (glibc only).

    PyTorch's CPU forwards allocate and free tensors of many MB per layer; glibc serves those with
    mmap and unmaps them when freed, so every forward faults its pages in again (measured: 588,543
    minor page faults for 60 hh pairs, 31,439 with this; docs/speed.md). Raising the mmap and trim
    thresholds makes the allocations reusable. It made annotation 18% faster on a loaded machine and
    no measurable difference on an idle one (docs/speed.md, "The demo, phase by phase"). The resident
    size stays at its peak, which one annotation reaches anyway. Off with LEGEND_MALLOC_TUNING=0; a
    no-op where glibc is absent.
    """
    import ctypes
    import os
    import sys

    if os.environ.get("LEGEND_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    return bool(libc.mallopt(m_mmap_threshold, 2**30) and libc.mallopt(m_trim_threshold, 2**31 - 1))
