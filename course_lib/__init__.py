"""course_lib: the tested helper library behind *From Sliding Windows to Feature Pyramids*.

Layers (nothing lower imports something higher):
    ops (boxes, NMS, anchors, pooling) <- backbones, segmentation, detection (models)
    <- data, engine, evaluation <- widgets <- notebooks
``profiles`` (how big things are) may be imported from any layer.
"""

__version__ = "0.1.0"  # the package's version (pyproject reads it); each notebook's set-up cell installs this one

# SETTING -- where the course is published. No public repository exists yet: set the GitHub URL (and the branch the
# notebooks are opened from) here, then run `python -m course_lib.setup`, which rewrites every notebook's set-up cell
# (Colab installs git+REPOSITORY@v<version>: push that tag) and the README's "Open in Colab" links.
REPOSITORY = "https://github.com/SET-ME/sliding-windows-to-feature-pyramids"
BRANCH = "main"
