"""matplotlib, optional: imported only when a figure is drawn, with the object-oriented API on an Agg
canvas (no display, no global pyplot state), and saved atomically.

matplotlib is not a dependency of the package (MMRec's own requirements include it); without it
:class:`PlotDependencyError` names the package and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Tuple, Union

from ..atomic import atomic_open
from ..errors import PlotDependencyError

PathLike = Union[str, "os.PathLike[str]"]


def new_figure(width: float, height: float) -> Tuple[Any, Any]:
    """(figure, axes) of ``width`` x ``height`` inches on an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotDependencyError(
            f"drawing figures needs the Python package 'matplotlib' ({exc}); install it with "
            "`pip install matplotlib` (MMRec's requirements already include it), or use the CSV "
            "written next to the figure.") from exc
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def save_figure(figure: Any, path: PathLike, dpi: int = 150) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (:func:`mmrec_rearm.atomic.atomic_open`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", what="the figure") as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    return path
