"""The small piece every explorer shares: a matplotlib figure redrawn inside an ipywidgets Output."""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
from IPython.display import display
from matplotlib.figure import Figure


class FigureView:
    """Owns one matplotlib ``Figure`` (no pyplot global state) and shows it in an ``Output`` widget."""

    def __init__(self, figsize=(8, 4.5)):
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.output = widgets.Output()

    def show(self) -> None:
        self.output.clear_output(wait=True)
        with self.output:
            display(self.figure)

    def pixels(self) -> np.ndarray:
        """The rendered figure as an RGBA array (tests use it to check that a control changed the picture)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(self.figure)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()
