# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa
