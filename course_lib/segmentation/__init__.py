"""Dense prediction, chapters 1-3: the sliding-window CNN, FCN-32s/16s/8s and U-Net.

    from course_lib.segmentation import FCN8s, UNet, PatchClassifier
"""
from .common import IMAGENET_MEAN, IMAGENET_STD, Normalize, center_crop, check_images, crop, load_checkpoint
from .fcn import FCN8s, FCN16s, FCN32s, bilinear_kernel, bilinear_upsampling
from .sliding_window import (
    DensePatchClassifier,
    PatchClassifier,
    center_pad,
    count_macs,
    crop_windows,
    extract_windows,
    label_windows,
    random_center_patches,
    shift_and_stitch,
    sliding_window_detect,
    sliding_window_scores,
    window_boxes,
)
from .unet import TiledUNet, UNet, mirror_pad, nearest_valid_sizes, unet_output_size, unet_tiled_inference
from .weight_map import class_balance_weights, touching_borders, unet_weight_map, weighted_cross_entropy

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "center_crop", "check_images", "crop", "load_checkpoint",
    "FCN32s", "FCN16s", "FCN8s", "bilinear_kernel", "bilinear_upsampling",
    "PatchClassifier", "DensePatchClassifier", "extract_windows", "sliding_window_scores", "shift_and_stitch",
    "center_pad", "random_center_patches", "window_boxes", "label_windows", "crop_windows",
    "sliding_window_detect", "count_macs",
    "UNet", "TiledUNet", "mirror_pad", "nearest_valid_sizes", "unet_output_size", "unet_tiled_inference",
    "class_balance_weights", "touching_borders", "unet_weight_map", "weighted_cross_entropy",
]
