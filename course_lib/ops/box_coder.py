# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.models.detection._utils import BoxCoder  # noqa
