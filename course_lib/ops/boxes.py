# TEMPORARY SHIM (to be replaced by the pure-PyTorch implementation)
from torchvision.ops import box_area, box_convert, box_iou, clip_boxes_to_image, generalized_box_iou, remove_small_boxes  # noqa
