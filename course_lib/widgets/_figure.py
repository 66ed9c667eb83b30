"""The small piece every explorer shares: a matplotlib figure rendered to a PNG shown by an ipywidgets ``Image``.

The PNG is rendered here, with Agg, every time: the picture never depends on the kernel's matplotlib backend.
(Displaying a ``Figure`` object instead shows only its text, ``<Figure size 900x420 with 2 Axes>``, on a fresh
kernel where pyplot's inline backend has not been loaded yet.) Updating the ``Image`` widget's value is one
message to the browser, which swaps the picture in place: no cleared output, no flicker, one paint per redraw.
"""
from __future__ import annotations

import io

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["FigureView", "ChangeGuard", "Explorer"]


class FigureView:
    """Owns one matplotlib ``Figure`` (no pyplot global state) and shows it as a PNG in ``self.output``.

    ``show()`` renders the figure and sends the PNG (``renders`` counts them: one per student input).
    ``show(relayout=False)`` keeps the axes where the last layout put them, which saves the constrained-layout
    pass (about a third of a redraw) when only the data changed. ``show(changing=artists)`` goes further: those
    artists are made ``animated``, a full render (the first, or one with ``relayout``) keeps the picture without
    them, and later renders paste that background back and draw only them on top, in the order given (Agg
    blitting): ticks, labels and images that do not change are not redrawn.
    """

    def __init__(self, figsize=(8, 4.5), dpi=100):
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        self.canvas = FigureCanvasAgg(self.figure)
        self.output = widgets.Image(format="png")
        self.renders = 0
        self._laid_out = False
        self._background = None  # the picture without the changing artists (show(changing=...))

    def show(self, relayout: bool = True, changing=None) -> None:
        if changing is None or relayout or self._background is None:
            for artist in changing or ():
                artist.set_animated(True)  # left out of the full render below
            self.figure.set_layout_engine("constrained" if relayout or not self._laid_out else "none")
            self.canvas.draw()
            self._laid_out = True
            self._background = self.canvas.copy_from_bbox(self.figure.bbox) if changing is not None else None
        else:
            self.canvas.restore_region(self._background)
        for artist in changing or ():
            self.figure.draw_artist(artist)
        rgba = np.asarray(self.canvas.buffer_rgba())
        buffer = io.BytesIO()
        # compress_level 1: a few ms instead of tens, for a PNG about 10 % larger
        Image.fromarray(rgba[..., :3]).save(buffer, format="png", compress_level=1)
        self.output.value = buffer.getvalue()
        self.renders += 1

    def pixels(self) -> np.ndarray:
        """The figure as last shown, as an RGBA array (tests use it to check that a control changed the picture)."""
        return np.asarray(self.canvas.buffer_rgba()).copy()


class ChangeGuard:
    """Turns many trait changes into one redraw.

    An explorer adjusts some controls itself while it reacts to one (a slider's range, a value clamped to it);
    each such change would call the observer again and redraw the picture once more. Inside ``with guard:``
    the observer's calls are ignored (``guard.busy`` is true), so one student input gives one redraw.
    """

    def __init__(self):
        self.busy = False

    def __enter__(self):
        self.busy = True
        return self

    def __exit__(self, *exc):
        self.busy = False
        return False


class Explorer:
    """What every explorer does with its ``controls`` (name -> widget) and ``widget`` (the layout shown).

    :meth:`_observe_controls` makes each control's new value call :meth:`_react` with the control's name -- once per
    student input: while an explorer reacts (``with self._guard``), the changes it makes to its own controls call
    nothing. ``_react`` redraws with :meth:`update` unless an explorer overrides it; displaying the explorer in a
    notebook shows ``widget``.
    """

    def _observe_controls(self) -> None:
        self._guard = ChangeGuard()
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self._on_change(name), names="value")

    def _on_change(self, name: str) -> None:
        if self._guard.busy:
            return
        with self._guard:
            self._react(name)

    def _react(self, name: str) -> None:
        self.update()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
