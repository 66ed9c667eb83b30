"""course_lib: the tested helper library behind *From Sliding Windows to Feature Pyramids*.

Layers (nothing lower imports something higher):
    ops (boxes, NMS, anchors, pooling) <- backbones, segmentation, detection (models)
    <- data, engine, evaluation <- widgets <- notebooks
``profiles`` (how big things are) may be imported from any layer.
"""

__version__ = "0.1.0"
