# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.ops import MultiScaleRoIAlign  # noqa
from torchvision.ops.poolers import LevelMapper  # noqa
