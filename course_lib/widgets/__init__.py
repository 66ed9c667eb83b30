"""Interactive explorers (ipywidgets + matplotlib) that the detector chapters embed.

Each explorer's logic is a pure function (``label_anchors``, ``nms_steps``, ``roi_level``) tested in
pytest; the classes wrap it in controls and a figure. Display one by leaving it as the last expression
of a cell, e.g. ``NMSExplorer()``.
"""
from .anchors import AnchorExplorer, anchors_at_location, label_anchors
from .nms import NMSExplorer, make_box_cluster, nms_steps
from .roi_levels import RoILevelExplorer, roi_level
from .psroi import PSRoIExplorer, psroi_bins

__all__ = ["AnchorExplorer", "anchors_at_location", "label_anchors", "NMSExplorer", "make_box_cluster",
           "nms_steps", "RoILevelExplorer", "roi_level", "PSRoIExplorer", "psroi_bins"]
