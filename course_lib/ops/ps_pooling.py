# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.ops import ps_roi_align, ps_roi_pool  # noqa
