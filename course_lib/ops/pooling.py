# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.ops import roi_align, roi_pool  # noqa
