"""Reference solutions of chapter 7's exercises (notebooks/07_fpn.ipynb)."""
import torch
import torch.nn.functional as F


def top_down_pathway(features, inner_blocks, layer_blocks, top_down=True, lateral=True):
    coarsest = len(features) - 1
    m = inner_blocks[coarsest](features[coarsest])  # M5 = L5(C5)
    pyramid = [layer_blocks[coarsest](m)]
    for k in range(coarsest - 1, -1, -1):
        if lateral:
            side = inner_blocks[k](features[k])
            m = side + F.interpolate(m, size=side.shape[-2:], mode="nearest") if top_down else side
        else:
            m = F.interpolate(m, size=features[k].shape[-2:], mode="nearest")
        pyramid.insert(0, layer_blocks[k](m))
    return pyramid


def level_of_rois(boxes, k_min=2, k_max=5, canonical_scale=224, canonical_level=4):
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    k = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + 1e-6)
    return k.clamp(k_min, k_max).to(torch.int64)
