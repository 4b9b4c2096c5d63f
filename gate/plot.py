"""PNG figures of the reports (calibration, evaluation, style shift, sweep): the one place that
imports matplotlib, on its non-interactive Agg backend.

Runs in the process that writes a report (CLI, or whoever calls the library). matplotlib is
imported on the first figure, not with the modules that draw: serving and most commands never
draw one, and pyplot must come after the backend is chosen.
"""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib  # lazy: about 0.5 s with pyplot, and only reports draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    return plt


def png(fig: Any, **savefig: Any) -> bytes:
    """The figure as PNG bytes (``savefig`` options passed on); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    pyplot().close(fig)
    return buf.getvalue()
