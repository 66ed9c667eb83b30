"""EFPN: the Extended Feature Pyramid Network for small objects (Deng, Wang, Liu, Liu, Jiang, IEEE TMM 2021;
arXiv:2003.07021 -- that version was withdrawn by its authors, see notebook 08).

Chapter 7's FPN detector with three pieces swapped in, nothing else copied::

    transform  -> backbone: EFPNBackbone   = chapter 7's body + FPN, plus the extension below
               -> rpn       (chapter 7's, on P2..P6 only: no anchors on P2', as in the authors' code)
               -> roi_heads: EFPNRoIHeads  = chapter 7's head for RoIs of side >= small_roi_size,
                                              a new head on P2' for the smaller ones (eq. 2, sec. IV-A3)

The extension (sec. III-A/B, Fig. 2-3)::

    C2'  = conv2_x(stem(x))                    Table I: conv2_x *without* the 3x3 max-pool, C2's own weights,
                                                stride 2 (800 x 800 input: C2 200 x 200, C2' 400 x 400)
    P3'  = E_t(P2 || E_c(P3)^2x) + E_c(P3)^2x   eq. 3, FeatureTextureTransfer; ^2x = sub-pixel convolution (eq. 4)
    P2'  = P3'^2x + C2'                         eq. 1; ^2x nearest; C2' through a 1x1 lateral conv, then a 3x3
                                                output conv, as FPN's own levels

Training (sec. III-C and IV-A3), one :func:`course_lib.engine.fit` call per stage:

1. the FPN baseline: chapter 7's detector with ``detection_loss``;
2. :func:`efpn_from_fpn`, ``set_stage(model, 2)`` (only the extension trains), ``loss_fn=CrossResolutionDistillation()``:
   L = L_fbb(P3', P3^2x) + L_fbb(P2', P2^2x) (eq. 5), the targets from the same FPN run on the 2x input;
3. ``set_stage(model, 3)``: only the new P2' head trains, with OHEM, on ``detection_loss``.

The teacher is the student's own top-four levels (the paper: "teacher model FPN and student model EFPN share the same
parameter weights from top 4 layers"), run on the 2x image in eval mode under ``torch.no_grad()``: it is never
trained (stage 2 refuses to run unless those weights are frozen), never in a checkpoint (it is no extra module), and
its batch norm never updates (a frozen batch norm stays in eval mode, see :class:`EFPN`).
"""
from __future__ import annotations

import copy
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import ImageList, LevelMapper, MultiScaleRoIAlign, box_area
from course_lib.state_dict import read_state_dict

from .faster_rcnn_fpn import fasterrcnn_resnet50_fpn
from .fpn import FPN_LEVELS, FPN_ROI_LEVELS
from .generalized_rcnn import GeneralizedRCNN
from .roi_heads import RoIHeads
from .transform import GeneralizedRCNNTransform, check_targets

__all__ = ["EFPN", "EFPNBackbone", "EFPNExtension", "EFPNRoIHeads", "FeatureTextureTransfer", "ResidualBlock",
           "CrossResolutionDistillation", "efpn_resnet50_fpn", "efpn_from_fpn", "set_stage", "fbb_loss",
           "positive_masks", "pixel_shuffle_eq4", "eq4_channel_order", "EFPNLevelMapper", "efpn_level_mapper", "EFPN_LEVELS", "P2_PRIME"]

P2_PRIME = "p2_prime"  # the name of the extended level in the feature dict
#: the extended pyramid's names -> level numbers (stride 2^level): P2' is level 1 (stride 2), then FPN's table
EFPN_LEVELS: dict[str, int] = {P2_PRIME: 1, **FPN_LEVELS}


# ----------------------------------------------------------------------------------- eq. 4: pixel shuffle


def pixel_shuffle_eq4(features: Tensor, r: int) -> Tensor:
    """Eq. 4 as printed (from ESPCN, Shi et al. 2016): ``PS(F)[x, y, c] = F[x // r, y // r, C r (y mod r) + C (x mod r) + c]``
    on ``F`` of shape [N, C r^2, H, W] -> [N, C, rH, rW], ``x`` the row and ``y`` the column.

    The channel order differs from ``torch.pixel_shuffle`` (``c r^2 + r (x mod r) + (y mod r)``): the two are equal up to
    the fixed channel permutation :func:`eq4_channel_order`, which the convolution before the shuffle absorbs.
    """
    n, channels, h, w = features.shape
    if r < 1 or channels % (r * r):
        raise ValueError(f"pixel_shuffle_eq4: {channels} channels are not divisible by r^2 = {r * r}.")
    c = channels // (r * r)
    # channel index = (j * r + i) * C + c with j = y mod r, i = x mod r  ->  view [N, j, i, c, H, W]
    return features.view(n, r, r, c, h, w).permute(0, 3, 4, 2, 5, 1).reshape(n, c, h * r, w * r)


def eq4_channel_order(channels: int, r: int) -> Tensor:
    """``perm`` such that ``pixel_shuffle_eq4(F, r) == torch.pixel_shuffle(F[:, perm], r)`` (``channels`` = C r^2)."""
    c = channels // (r * r)
    ci, i, j = torch.meshgrid(torch.arange(c), torch.arange(r), torch.arange(r), indexing="ij")
    return (c * r * j + c * i + ci).reshape(-1)  # torch's channel ci r^2 + i r + j reads eq. 4's C r j + C i + ci


# ----------------------------------------------------------------------------------- eq. 3: FTT


class ResidualBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, plus the input, then ReLU (the block of the authors' ``upsample.py``, SRNTT's)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # relu(x + conv2(relu(conv1(x)))) in place on the convolutions' fresh outputs (their backward does not read
        # them): the same numbers, two maps fewer to allocate
        return F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x), inplace=True)


class _CodeContentExtractor(nn.Module):
    """The authors' E_c: conv 256 -> 512 + LeakyReLU(0.1), residual blocks, plus a skip from the first conv."""

    def __init__(self, channels: int, inner: int, blocks: int, slope: float):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(channels, inner, 3, padding=1), nn.LeakyReLU(slope))
        self.body = nn.Sequential(*[ResidualBlock(inner) for _ in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        h = self.head(x)
        return self.body(h) + h


def _match_size(x: Tensor, like: Tensor) -> Tensor:
    """``x`` cropped (or zero-padded) at the bottom/right to the spatial size of ``like``.

    Maps of an input whose side is not a multiple of the stride differ by one cell between levels (a stride-2
    convolution rounds up): P3 of a 101-row image has 13 rows, P2 26, 2 x 13 = 26; of a 97-row image 13 and 25.
    """
    dh, dw = like.shape[-2] - x.shape[-2], like.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (0, dw, 0, dh))  # negative padding crops


def _add_nearest_2x(x: Tensor, coarse: Tensor) -> Tensor:
    """``x + _match_size(nearest_2x(coarse), x)``. Without gradients and with ``x`` exactly twice ``coarse``'s size,
    the same numbers without the upsampled map (at P2' as big as P2' itself): ``coarse`` broadcast over each 2 x 2
    block. (With gradients, the upsampling's backward sums each block's four in its own order: kept, so that training
    stays bit for bit what it was.)"""
    n, c, h, w = x.shape
    grad = torch.is_grad_enabled() and (x.requires_grad or coarse.requires_grad)
    if grad or (h, w) != (2 * coarse.shape[-2], 2 * coarse.shape[-1]):
        return x + _match_size(F.interpolate(coarse, scale_factor=2.0, mode="nearest"), x)
    blocks = x.unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2))  # [N, C, h/2, 2, w/2, 2]: a view
    return (blocks + coarse[:, :, :, None, :, None]).flatten(4, 5).flatten(2, 3)


class FeatureTextureTransfer(nn.Module):
    """Feature Texture Transfer (sec. III-B, Fig. 3, eq. 3): ``forward(p3, p2) -> p3_prime`` at P2's resolution::

        content = E_c(P3)^2x                 content extractor (residual blocks), then x2 sub-pixel convolution:
                                             conv to 4x the channels + pixel shuffle (eq. 4, r = 2)
        P3'     = E_t(P2 || content) + content   texture extractor (residual blocks) on the concatenation

    ``variant="paper"`` (default): what the paper states -- 2 residual blocks in each extractor (sec. IV-A3), at the
    pyramid's ``channels`` (256); E_t starts with a 3x3 conv from the 2 x 256 concatenated channels down to 256.

    ``variant="code"``: the authors' ``lib/modeling/upsample.py`` (zhaowujie/EFPN-pytorch), which differs: 512 inner
    channels; E_c = conv + LeakyReLU(0.1) + 1 residual block + skip; LeakyReLU after the shuffle; concatenation order
    (content, P2); a tail conv 512 -> 512 + LeakyReLU + conv 512 -> 256 after the residual sum; and the
    nearest-upsampled P3 added to the output. (Their inputs are also FPN's *inner* maps, before the 3x3 output convs;
    ours are P3 and P2 as in the paper, in both variants.)

    ``variant="nearest"``: no FTT -- P3' = P3 upsampled x2 by nearest neighbour (Table III, "EFPN w/o FTT").
    """

    def __init__(self, channels: int = 256, *, variant: str = "paper"):
        super().__init__()
        if variant not in ("paper", "code", "nearest"):
            raise ValueError(f"variant must be 'paper', 'code' or 'nearest', got {variant!r}")
        self.variant, self.channels = variant, channels
        if variant == "nearest":
            return
        if variant == "paper":
            inner, slope = channels, None
            self.content_extractor = nn.Sequential(ResidualBlock(channels), ResidualBlock(channels))
            self.sub_pixel = nn.Sequential(nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2))
            self.tail = nn.Identity()
        else:
            inner, slope = 2 * channels, 0.1
            self.content_extractor = _CodeContentExtractor(channels, inner, 1, slope)
            self.sub_pixel = nn.Sequential(nn.Conv2d(inner, 4 * inner, 3, padding=1), nn.PixelShuffle(2),
                                           nn.LeakyReLU(slope))
            self.tail = nn.Sequential(nn.Conv2d(inner, inner, 3, padding=1), nn.LeakyReLU(slope),
                                      nn.Conv2d(inner, channels, 3, padding=1))
        act = nn.ReLU() if slope is None else nn.LeakyReLU(slope)
        self.texture_extractor = nn.Sequential(nn.Conv2d(inner + channels, inner, 3, padding=1), act,
                                               ResidualBlock(inner), ResidualBlock(inner))

    def forward(self, p3: Tensor, p2: Tensor) -> Tensor:
        if p3.shape[1] != self.channels or p2.shape[1] != self.channels:
            raise ValueError(f"FeatureTextureTransfer({self.channels}) needs {self.channels}-channel P3 and P2, "
                             f"got {p3.shape[1]} and {p2.shape[1]}.")
        if self.variant == "nearest":
            return _match_size(F.interpolate(p3, scale_factor=2.0, mode="nearest"), p2)
        content = _match_size(self.sub_pixel(self.content_extractor(p3)), p2)
        wrap = torch.cat([p2, content] if self.variant == "paper" else [content, p2], dim=1)  # P2 || E_c(P3)^2x
        p3_prime = self.texture_extractor(wrap) + content
        if self.variant == "code":
            p3_prime = self.tail(p3_prime) + _match_size(F.interpolate(p3, scale_factor=2.0, mode="nearest"), p2)
        return p3_prime


# ----------------------------------------------------------------------------------- eq. 1: P2'


class EFPNExtension(nn.Module):
    """The bottom extension of Fig. 2(b): FTT, then an FPN-like top-down step onto C2' (eq. 1)::

        P3' = FTT(P3, P2);   P2' = output(lateral(C2') + nearest_2x(P3'))

    ``lateral`` (1x1) and ``output`` (3x3) are built as FPN's ``inner_blocks`` / ``layer_blocks`` (with bias;
    the authors' code has none). ``forward(c2_prime, p3, p2) -> (P2_prime, P3_prime)``.
    """

    def __init__(self, c2_channels: int = 256, channels: int = 256, *, ftt: str = "paper"):
        super().__init__()
        self.ftt = FeatureTextureTransfer(channels, variant=ftt)
        self.lateral = nn.Conv2d(c2_channels, channels, kernel_size=1)
        self.output = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        for m in (self.lateral, self.output):  # FPN's (torchvision's) initialisation
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.constant_(m.bias, 0)

    def forward(self, c2_prime: Tensor, p3: Tensor, p2: Tensor) -> tuple[Tensor, Tensor]:
        P3_prime = self.ftt(p3, p2)
        lateral = self.lateral(c2_prime)
        return self.output(_add_nearest_2x(lateral, P3_prime)), P3_prime


class EFPNBackbone(nn.Module):
    """Chapter 7's ``body`` and ``fpn`` (the same modules, shared) plus :class:`EFPNExtension`.

    ``forward(x)`` returns the extended pyramid, finest first: ``P2_PRIME`` (stride 2), then FPN's
    "0".."3" (P2..P5) and "pool" (P6), 256 channels each. :meth:`extended` also returns P3' (for eq. 5);
    :meth:`pyramid` is the plain FPN (the teacher on the 2x input). ``c2_prime(x)`` is Table I's new branch.
    """

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int = 256, *, ftt: str = "paper"):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels
        self.extension = EFPNExtension(body.out_channels_list[0], out_channels, ftt=ftt)  # C2: 256 channels

    def c2_prime(self, x: Tensor) -> Tensor:
        """C2' (Table I): conv2_x (``body.layer1``, the same weights as C2) on the stem output, no max-pool."""
        return self.body.layer1(self.body.stem(x))

    def pyramid(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The plain FPN: P2..P6 (chapter 7's backbone)."""
        return self.fpn(self.body(x))

    def extended(self, x: Tensor) -> tuple[OrderedDict[str, Tensor], Tensor]:
        stem = self.body.stem(x)  # once, for C2..C5 (pyramid) and C2' (c2_prime)
        p = self.fpn(self.body.after_stem(stem))
        P2_prime, P3_prime = self.extension(self.body.layer1(stem), p["1"], p["0"])
        return OrderedDict([(P2_PRIME, P2_prime), *p.items()]), P3_prime

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.extended(x)[0]


# ----------------------------------------------------------------------------------- eq. 2: routing


class EFPNLevelMapper(LevelMapper):
    """EFPN's routing rule (eq. 2 with sec. IV-A3), given to the RoI pooler as its level rule: a RoI with
    sqrt(w h) < ``small_roi_size`` goes to P2' (level 1); the others follow FPN's eq. 1 (:class:`LevelMapper`) over
    P2..P5. ``levels`` are all five, finest first; ``eq1_levels`` the four of eq. 1."""

    def __init__(self, small_roi_size: float = 112.0, **eq1_options):
        if not (isinstance(small_roi_size, (int, float)) and small_roi_size > 0):
            raise ValueError(f"small_roi_size must be a positive number of pixels (paper: 112 on COCO, 56 on "
                             f"TT100K), got {small_roi_size!r}")
        super().__init__(levels=[EFPN_LEVELS[name] for name in FPN_ROI_LEVELS], **eq1_options)
        self.threshold, self.small_level = float(small_roi_size), EFPN_LEVELS[P2_PRIME]
        self.levels = [self.small_level, *self.eq1_levels]

    def level(self, boxlists: list[Tensor]) -> Tensor:
        k = super().level(boxlists)
        sizes = torch.sqrt(torch.cat([box_area(boxes) for boxes in boxlists]))
        return torch.where(sizes < self.threshold, torch.full_like(k, self.small_level), k)

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        k = self.level(boxlists)
        return torch.searchsorted(torch.tensor(self.levels, dtype=torch.int64, device=k.device), k)

    def __repr__(self) -> str:
        return f"EFPNLevelMapper(small_roi_size={self.threshold}, levels={self.levels})"


def efpn_level_mapper(small_roi_size: float = 112.0) -> EFPNLevelMapper:
    """EFPN's routing rule (:class:`EFPNLevelMapper`): 112 px at 800 px on COCO is where eq. 1 (k0 = 4, clamped at
    2) sends a RoI to P2 (k < 3); 56 px at 1400 px on TT100K. The very rule the detector's pooler applies
    (``roi_heads.box_roi_pool.map_levels``)."""
    return EFPNLevelMapper(small_roi_size)


class EFPNRoIHeads(RoIHeads):
    """Chapter 7's RoI heads plus a second head for small RoIs on P2' (sec. IV-A3).

    One pooler over P2', P2..P5 with EFPN's rule (:class:`EFPNLevelMapper`: sqrt(wh) < ``small_roi_size`` -> P2',
    the rest by FPN's eq. 1) pools every RoI and says its level; ``predict`` -- the only method overridden -- scores
    the P2' RoIs with ``small_box_head``/``small_box_predictor`` and the others with the original ``box_head``/
    ``box_predictor``. Sampling, losses (OHEM included) and post-processing are the parent's, so at inference both
    heads' boxes go through the same per-class NMS: "all predicted boxes from different pyramid levels are combined".

    (The authors' COCO inference *duplicates* each small RoI onto both heads before NMS; the paper's text and their
    TT100K variant route each RoI to one head, as here.)

    Build it with the parent's arguments plus the keywords below, or from existing heads with :meth:`from_roi_heads`.
    """

    def __init__(self, *args, small_box_head: nn.Module, small_box_predictor: nn.Module,
                 small_roi_size: float = 112.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_small_head(small_box_head, small_box_predictor, small_roi_size)

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, *, small_box_head: nn.Module, small_box_predictor: nn.Module,
                       small_roi_size: float = 112.0) -> "EFPNRoIHeads":
        """EFPN heads with the settings and the (shared) modules of chapter 7's ``heads``, plus the P2' head."""
        return cls(heads.box_roi_pool, heads.box_head, heads.box_predictor, **heads.settings(),
                   small_box_head=small_box_head, small_box_predictor=small_box_predictor, small_roi_size=small_roi_size)

    def _add_small_head(self, small_box_head: nn.Module, small_box_predictor: nn.Module, small_roi_size: float):
        self.small_box_head = small_box_head
        self.small_box_predictor = small_box_predictor
        self.small_roi_size = small_roi_size

    @property
    def small_roi_size(self) -> float:
        """The routing threshold in pixels of the network's input (of the pooler's :class:`EFPNLevelMapper`)."""
        return self.box_roi_pool.map_levels.threshold

    @small_roi_size.setter
    def small_roi_size(self, value: float) -> None:
        old = self.box_roi_pool  # chapter 7's pooler (or ours): keep its output size and sampling
        self.box_roi_pool = MultiScaleRoIAlign(
            [P2_PRIME, *FPN_ROI_LEVELS], output_size=old.output_size, sampling_ratio=old.sampling_ratio,
            levels=EFPN_LEVELS, level_mapper=EFPNLevelMapper(value))

    def predict(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
                ) -> tuple[Tensor, Tensor]:
        if P2_PRIME not in features:
            raise ValueError(f"EFPNRoIHeads needs the extended level {P2_PRIME!r} among the features, got "
                             f"{list(features)}: use an EFPNBackbone.")
        pooled, levels = self.box_roi_pool(features, proposals, image_shapes, return_levels=True)
        small = levels == EFPN_LEVELS[P2_PRIME]
        small_logits, small_deltas = self.small_box_predictor(self.small_box_head(pooled[small]))
        logits, deltas = self.box_predictor(self.box_head(pooled[~small]))
        class_logits = logits.new_empty((len(small), logits.shape[1]))
        box_regression = deltas.new_empty((len(small), deltas.shape[1]))
        class_logits[small], class_logits[~small] = small_logits.to(logits.dtype), logits
        box_regression[small], box_regression[~small] = small_deltas.to(deltas.dtype), deltas
        return class_logits, box_regression


# ----------------------------------------------------------------------------------- the detector


class EFPN(GeneralizedRCNN):
    """Faster R-CNN with an :class:`EFPNBackbone` and :class:`EFPNRoIHeads` (chapter 7's pieces otherwise).

    One difference in ``train()``: a batch norm whose parameters are all frozen stays in eval mode, so freezing the
    backbone (stages 2 and 3) also freezes its statistics -- the teacher shares them and must not drift.
    """

    def train(self, mode: bool = True) -> "EFPN":
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and \
                        not any(p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    @contextmanager
    def p2_prime_route_off(self) -> Iterator["EFPN"]:
        """Inside the ``with`` block no RoI goes to P2': the routing threshold is 0 px, which no RoI falls under
        (sqrt(wh) >= 0), so every RoI follows FPN's eq. 1 over P2..P5 to FPN's head. An EFPN made by
        :func:`efpn_from_fpn` (which shares the FPN's modules) then gives exactly that FPN's detections -- the
        control that EFPN is its stage-1 FPN plus the P2' route and nothing else (a test checks ``torch.equal``).

        Switched off: the P2' RoI pooling and the P2' head (it sees no RoI). Not switched off, as it changes no
        detection: the backbone still computes P3' and P2' (their time is spent, their maps unread); the RPN is
        unchanged -- it never had anchors on P2'. The threshold is restored on leaving the block, after an error too.
        """
        mapper = self.roi_heads.box_roi_pool.map_levels
        threshold, mapper.threshold = mapper.threshold, 0.0
        try:
            yield self
        finally:
            mapper.threshold = threshold


def efpn_from_fpn(fpn: GeneralizedRCNN, *, small_roi_size: float = 112.0, ftt: str = "paper",
                  copy_head: bool = True) -> EFPN:
    """An EFPN around a (trained) chapter-7 FPN detector, sharing its modules: stage 1 -> stage 2.

    The extension (FTT, lateral, output conv) starts untrained. The P2' head starts as a copy of the trained head
    (``copy_head=True``; P2' is trained to look like P2 of the 2x image, which that head reads) or freshly
    initialised (``copy_head=False``); the paper says only that "a new detector head" is fine-tuned.
    """
    heads = fpn.roi_heads
    if not isinstance(getattr(fpn.backbone, "fpn", None), nn.Module):
        raise TypeError(f"efpn_from_fpn needs a Faster R-CNN with an FPN backbone (body + fpn), got "
                        f"{type(fpn.backbone).__name__}.")
    backbone = EFPNBackbone(fpn.backbone.body, fpn.backbone.fpn, fpn.backbone.out_channels, ftt=ftt)
    small_head, small_predictor = copy.deepcopy(heads.box_head), copy.deepcopy(heads.box_predictor)
    if not copy_head:
        for m in (*small_head.modules(), *small_predictor.modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.reset_parameters()
    roi_heads = EFPNRoIHeads.from_roi_heads(heads, small_box_head=small_head, small_box_predictor=small_predictor,
                                            small_roi_size=small_roi_size)
    # chapter 7's RPN (head and anchors shared) on P2..P6: no anchors on P2' (the authors' code: RPN on P2..P6 only)
    rpn = fpn.rpn.on_maps(fpn.rpn.featmap_names or list(FPN_LEVELS))
    return EFPN(backbone, rpn, roi_heads, fpn.transform)


def efpn_resnet50_fpn(*, num_classes: int | None = None, weights: str | os.PathLike | None = None,
                      weights_backbone: str | os.PathLike | None = None, small_roi_size: float = 112.0,
                      ftt: str = "paper", **kwargs) -> EFPN:
    """EFPN on Faster R-CNN ResNet-50-FPN (torchvision-style keywords; ``min_size``, ``max_size`` ... pass on).

    ``weights``: a local state dict file, either an EFPN's (everything loads) or a plain FPN detector's
    (chapter 7's ``fasterrcnn_resnet50_fpn``): then the top four levels and heads load, and the extension and the P2'
    head start untrained -- said in a warning, since such a model is not yet an EFPN (train stages 2 and 3).
    ``small_roi_size``: 112 at 800 px (COCO), 56 at 1400 px (TT100K), sec. IV-A3.
    """
    state_dict = read_state_dict(weights) if weights is not None else None
    is_efpn = state_dict is not None and any(k.startswith("backbone.extension.") for k in state_dict)
    if not is_efpn:
        fpn = fasterrcnn_resnet50_fpn(num_classes=num_classes, weights=weights, weights_backbone=weights_backbone,
                                      **kwargs)
        model = efpn_from_fpn(fpn, small_roi_size=small_roi_size, ftt=ftt, copy_head=weights is not None)
    else:
        # chapter 7's builder loads the top four levels and heads (its checks, frozen batch norm, eps) from just
        # those keys; the extension and the P2' head are loaded here
        extension_keys = {k for k in state_dict if k.startswith(("backbone.extension.", "roi_heads.small_box_"))}
        fpn = fasterrcnn_resnet50_fpn(num_classes=num_classes, weights={k: v for k, v in state_dict.items()
                                                                         if k not in extension_keys}, **kwargs)
        model = efpn_from_fpn(fpn, small_roi_size=small_roi_size, ftt=ftt)
        own = {k for k in model.state_dict() if k.startswith(("backbone.extension.", "roi_heads.small_box_"))}
        if own != extension_keys:
            raise ValueError(f"The weights in {os.fspath(weights)!r} do not fit an EFPN ResNet-50 with ftt={ftt!r}: "
                             f"missing {sorted(own - extension_keys)[:3]}, unexpected "
                             f"{sorted(extension_keys - own)[:3]}. Pass the ftt variant the file was trained with.")
        model.load_state_dict({k: state_dict[k] for k in extension_keys}, strict=False)
    if weights is not None and not is_efpn:
        warnings.warn(f"{os.fspath(weights)!r} holds a plain FPN detector: its top four levels and heads are loaded, "
                      "but the EFPN extension (FTT, C2' lateral, P2' output conv) is untrained and the P2' head is a "
                      "copy of the FPN head. Train stage 2 (distillation) and stage 3 (P2' head) before using it.",
                      stacklevel=2)
    return model


# ----------------------------------------------------------------------------------- the stages


def set_stage(model: EFPN, stage: int, *, ohem_batch_size_per_image: int | None = None) -> list[nn.Parameter]:
    """Freeze what the paper's training stage ``stage`` keeps fixed (sec. IV-A3); returns the trainable parameters.

    * 1 -- everything but the extension and the P2' head (the FPN baseline, if trained inside the EFPN);
    * 2 -- only the extension (FTT, C2' lateral, P2' output conv): "we train EFPN with backbones and heads freezed";
    * 3 -- only the P2' head ("we finetune a new detector head for the extended pyramid level with the help of
      OHEM"); ``ohem_batch_size_per_image`` sets the RoI heads' OHEM (None keeps theirs).
    """
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3 (sec. IV-A3), got {stage!r}")
    extension = model.backbone.extension
    small = [model.roi_heads.small_box_head, model.roi_heads.small_box_predictor]
    model.requires_grad_(stage == 1)
    if stage == 1:
        extension.requires_grad_(False)
        for m in small:
            m.requires_grad_(False)
    elif stage == 2:
        extension.requires_grad_(True)
    else:
        for m in small:
            m.requires_grad_(True)
        if ohem_batch_size_per_image is not None:
            if not hasattr(model.roi_heads, "ohem_batch_size_per_image"):
                raise RuntimeError("These RoI heads have no OHEM option (ohem_batch_size_per_image).")
            model.roi_heads.ohem_batch_size_per_image = ohem_batch_size_per_image
    model.train(model.training)  # frozen batch norms to eval mode
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------------- eq. 5-8: the loss


def positive_masks(boxes: list[Tensor], size: tuple[int, int], stride: float) -> Tensor:
    """The positive pixels of eq. 7: the ground-truth boxes mapped onto a feature map of ``size`` = (H, W) and
    ``stride`` (in input pixels), snapped outward to whole cells (as the authors' ``rois_reshape``:
    floor(x1 / s) .. ceil(x2 / s)); clipped to the map. Returns bool [len(boxes), H, W].

    No loop over boxes: each box adds +1 / -1 at its four corners of a difference grid, whose 2-D cumulative sum
    is the number of boxes covering each cell.
    """
    h, w = int(size[0]), int(size[1])
    n = len(boxes)
    device = boxes[0].device if n else torch.device("cpu")
    diff = torch.zeros(n, h + 1, w + 1, dtype=torch.int32, device=device)
    if n:
        counts = [len(b) for b in boxes]
        allb = torch.cat([b.reshape(-1, 4) for b in boxes]).to(torch.float64)
        img = torch.repeat_interleave(torch.arange(n, device=device), torch.tensor(counts, device=device))
        x1 = torch.floor(allb[:, 0] / stride).clamp(0, w).long()
        y1 = torch.floor(allb[:, 1] / stride).clamp(0, h).long()
        x2 = torch.ceil(allb[:, 2] / stride).clamp(0, w).long()
        y2 = torch.ceil(allb[:, 3] / stride).clamp(0, h).long()
        keep = (x2 > x1) & (y2 > y1)
        img, x1, y1, x2, y2 = img[keep], x1[keep], y1[keep], x2[keep], y2[keep]
        ones = torch.ones_like(x1, dtype=torch.int32)
        for yy, xx, sign in ((y1, x1, 1), (y1, x2, -1), (y2, x1, -1), (y2, x2, 1)):
            diff.index_put_((img, yy, xx), sign * ones, accumulate=True)
    return diff.cumsum(1).cumsum(2)[:, :h, :w] > 0


def fbb_loss(student: Tensor, target: Tensor, positive_mask: Tensor, lam: float = 1.0, *,
             channel_mean: bool = True) -> Tensor:
    """The foreground-background-balanced loss (eq. 6-8): ``L_fbb = L_glob + lam * L_pos``.

    * L_glob (eq. 6) = ||F^t - F||_1 over the whole map -- "l1 loss that is commonly used in SR": the mean absolute
      difference over all N x C x H x W elements (the authors' ``F.l1_loss``).
    * L_pos (eq. 7) = (1 / N) sum over the positive pixels (x, y) of ||F^t_xy - F_xy||_1, N = their number. With
      ``channel_mean=True`` (default, the authors' code: their mask is repeated over channels) the per-pixel L1 norm is
      also divided by C, so both terms are on the same per-element scale and lam = 1 balances them; with
      ``channel_mean=False`` it is the per-pixel sum over channels, eq. 7 read literally.
    * No positive pixel (an image without objects): L_pos = 0 (nothing to divide by), and L_fbb = L_glob.

    ``student``, ``target``: [N, C, H, W] (the teacher's target comes from ``torch.no_grad()``); ``positive_mask``:
    bool [N, H, W].
    """
    if student.shape != target.shape:
        raise ValueError(f"fbb_loss: student {tuple(student.shape)} and target {tuple(target.shape)} differ; align "
                         "them first (CrossResolutionDistillation crops to the common size).")
    if positive_mask.shape != student.shape[:1] + student.shape[2:]:
        raise ValueError(f"fbb_loss: positive_mask must have shape {tuple(student.shape[:1] + student.shape[2:])} "
                         f"([N, H, W]), got {tuple(positive_mask.shape)}.")
    diff = (student - target).abs()
    l_glob = diff.mean()
    per_pixel = diff.mean(1) if channel_mean else diff.sum(1)  # ||.||_1 at each (x, y)
    mask = positive_mask.to(per_pixel.dtype)
    n = mask.sum()
    l_pos = (per_pixel * mask).sum() / n.clamp(min=1.0)  # n = 0: the sum is 0 too
    return l_glob + lam * l_pos


class CrossResolutionDistillation:
    """The ``loss_fn`` of stage 2 for :func:`course_lib.engine.fit` (sec. III-C, eq. 5):
    ``{"loss_fbb_p3": L_fbb(P3', P3^2x), "loss_fbb_p2": L_fbb(P2', P2^2x)}``.

    The 2x input: the batch is prepared at twice the model's ``min_size``/``max_size`` (padded to a multiple of 2 x
    ``size_divisible``) for the teacher, and average-pooled 2x2 for the student -- as the authors' code does
    (``AvgPool2d(2)`` of the image the teacher sees), so P2^2x (stride 4 of 2x) and P2' (stride 2 of 1x) align cell
    for cell. Maps that still differ by a cell (a custom ``teacher`` on odd sizes) are cropped to the common size.

    ``teacher``: None (default, the paper) = the student's own body and FPN, which must be frozen (stage 2); or a
    separate module mapping images to P2..P6 (e.g. a frozen copy), kept here -- not in the model, so never in its
    checkpoint. Either runs in eval mode under ``torch.no_grad()``. ``lam``: eq. 8's lambda (1). ``p3_loss=False``
    drops the FTT term (Table IV), ``lam=0`` the positive-patch term. ``detection_weight`` > 0 adds the detector's
    own losses (weighted), for the "extension only" ablation use ``detection_loss`` instead.
    """

    def __init__(self, teacher: nn.Module | None = None, *, lam: float = 1.0, p3_loss: bool = True,
                 channel_mean: bool = True, detection_weight: float = 0.0):
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.lam, self.p3_loss, self.channel_mean, self.detection_weight = lam, p3_loss, channel_mean, detection_weight

    def _teacher(self, model: EFPN):
        shared = [model.backbone.body, model.backbone.fpn]
        trainable = [n for m in shared for n, p in m.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(f"The teacher is the student's own FPN (shared weights, as in the paper), so it must be "
                               f"frozen in stage 2, but {len(trainable)} of its parameters train (e.g. "
                               f"{trainable[0]!r}). Call set_stage(model, 2) first.")
        return model.backbone.pyramid

    def prepare(self, model: EFPN, images, targets) -> tuple[ImageList, list[dict], ImageList]:
        """(student batch, student targets, teacher batch): the 2x batch and its 2x2 average pool."""
        t = model.transform
        double = GeneralizedRCNNTransform(tuple(2 * s for s in t.min_size), 2 * t.max_size, t.image_mean, t.image_std,
                                          size_divisible=2 * t.size_divisible)
        teacher_batch, targets2 = double(list(images), check_targets(targets))
        student = ImageList(F.avg_pool2d(teacher_batch.tensors, 2),
                            [(h // 2, w // 2) for h, w in teacher_batch.image_sizes])
        student_targets = [{**tg, "boxes": tg["boxes"] / 2} for tg in targets2]
        return student, student_targets, teacher_batch

    def __call__(self, model: EFPN, batch) -> dict[str, Tensor]:
        images, targets = batch
        student_batch, student_targets, teacher_batch = self.prepare(model, images, targets)
        if self.teacher is None:
            teacher = self._teacher(model)
            modules = [m for part in (model.backbone.body, model.backbone.fpn) for m in part.modules()]
        else:
            teacher = self.teacher.to(teacher_batch.tensors.device)
            modules = list(teacher.modules())
        modes = [(m, m.training) for m in modules]
        try:
            for m in modules:
                m.eval()
            with torch.no_grad():
                target = teacher(teacher_batch.tensors)
        finally:
            for m, was in modes:
                m.train(was)
        features, P3_prime = model.backbone.extended(student_batch.tensors)
        P2_prime = features[P2_PRIME]
        boxes = [t["boxes"] for t in student_targets]
        losses = {}
        pairs = [("loss_fbb_p2", P2_prime, target["0"], 2)]
        if self.p3_loss:
            pairs.insert(0, ("loss_fbb_p3", P3_prime, target["1"], 4))
        for name, student, goal, stride in pairs:
            goal = goal.to(student.dtype)
            h, w = min(student.shape[-2], goal.shape[-2]), min(student.shape[-1], goal.shape[-1])
            student, goal = student[..., :h, :w], goal[..., :h, :w]
            mask = positive_masks(boxes, (h, w), stride)
            losses[name] = fbb_loss(student, goal, mask, self.lam, channel_mean=self.channel_mean)
        if self.detection_weight > 0:
            proposals, rpn_losses = model.proposals(student_batch, features, student_targets)
            _, head_losses = model.detect(features, proposals, student_batch, student_targets)
            losses.update({k: self.detection_weight * v for k, v in {**rpn_losses, **head_losses}.items()})
        return losses
