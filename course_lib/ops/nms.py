# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.ops import nms, batched_nms  # noqa
