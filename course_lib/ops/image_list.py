# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.models.detection.image_list import ImageList  # noqa
