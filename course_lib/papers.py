"""Every number the course attributes to a paper, once, with where it stands in that paper.

A notebook never types a paper's number: it reads it from here, so a number is corrected in one place and every
"beside the paper" table follows. Each entry names the paper, the table (or section / figure), the row and the
column, the dataset and split, and the setting (backbone, variant) -- enough for a student to find it in the PDF::

    >>> from course_lib import papers
    >>> papers.value("fpn.table3.c4.ap")            # doctest: +SKIP
    >>> print(papers.cite("fpn.table3.c4.ap"))      # doctest: +SKIP
    >>> papers.beside_the_paper([("FPN, AP", 0.41, "fpn.table3.fpn.ap")], title="...")   # a table for the notebook

Keys read ``<paper>.<table>.<row>.<column>`` in lower case (e.g. ``rfcn.table3.rfcn.test_s``). Add entries under the
heading of their paper, and verify each against the paper's own text (not a review or a slide) before committing it.
"""
from __future__ import annotations

import difflib
import html
from dataclasses import dataclass

__all__ = ["PaperNumber", "PAPERS", "NUMBERS", "number", "value", "cite", "BesideThePaper", "beside_the_paper"]


@dataclass(frozen=True)
class PaperNumber:
    """One quoted number (or a non-numeric entry such as R-FCN's "fail") and where it stands in its paper."""

    value: float | int | str
    paper: str  # a key of PAPERS
    table: str  # "Table 3", "Sec. 4.1", "Fig. 6" ...
    row: str  # the row (or the sentence) that carries it
    column: str  # "AP", "mAP (%)", "s/img" ...
    dataset: str  # "COCO minival", "PASCAL VOC 2007 test" ...
    setting: str = ""  # backbone / variant: "ResNet-50, C4 baseline"
    unit: str = ""  # "%", "s", "MB" ... ("" when the column says it)
    note: str = ""  # anything a reader needs to compare fairly (GPU model, test-time tricks ...)

    def cite(self) -> str:
        where = f"{self.table}, {self.row}" if self.row else self.table
        setting = f", {self.setting}" if self.setting else ""
        return f"{PAPERS[self.paper]} -- {where}, {self.column} ({self.dataset}{setting})"

    def formatted(self) -> str:
        if isinstance(self.value, str):
            return self.value
        return f"{self.value:g}{self.unit}"


# Papers by short key: authors, title, venue (the version the course quotes).
PAPERS: dict[str, str] = {
    "overfeat": ("Sermanet, Eigen, Zhang, Mathieu, Fergus & LeCun, \"OverFeat: Integrated Recognition, Localization and "
                 "Detection using Convolutional Networks\", ICLR 2014 (arXiv:1312.6229)"),
    "fcn": ("Long, Shelhamer & Darrell, \"Fully Convolutional Networks for Semantic Segmentation\", CVPR 2015 "
            "(arXiv:1411.4038)"),
    "unet": ("Ronneberger, Fischer & Brox, \"U-Net: Convolutional Networks for Biomedical Image Segmentation\", "
             "MICCAI 2015 (arXiv:1505.04597)"),
    # chapters 4, 5, 7 (the R-CNN lineage and FPN)
    "rcnn": "Girshick, Donahue, Darrell & Malik, Rich feature hierarchies for accurate object detection and semantic "
            "segmentation (CVPR 2014)",
    "fast_rcnn": "Girshick, Fast R-CNN (ICCV 2015)",
    "faster_rcnn": "Ren, He, Girshick & Sun, Faster R-CNN: Towards Real-Time Object Detection with Region Proposal "
                   "Networks (NeurIPS 2015; arXiv v3)",
    "fpn": "Lin, Dollar, Girshick, He, Hariharan & Belongie, Feature Pyramid Networks for Object Detection (CVPR 2017)",
}

# The numbers, grouped by paper (keep each group under a comment naming the paper).
NUMBERS: dict[str, PaperNumber] = {
    # --- OverFeat (Sermanet et al., ICLR 2014): chapter 01 ---------------------------------------------------------
    "overfeat.abstract.ilsvrc2013.localization": PaperNumber(
        "winner", "overfeat", "Abstract", "the integrated framework", "localization task", "ImageNet ILSVRC2013",
        note="\"This integrated framework is the winner of the localization task of ... ILSVRC2013\"; the sliding "
             "window is computed inside the ConvNet, as chapter 01 does"),

    # --- FCN (Long, Shelhamer & Darrell, CVPR 2015): chapters 01 and 02 -------------------------------------------
    # Sec. 3.1: convolutionalized AlexNet, batched windows vs one pass (the paper's own timing on "a typical GPU")
    "fcn.sec3_1.alexnet_window.ms": PaperNumber(
        1.2, "fcn", "Sec. 3.1", "AlexNet, classification scores of one 227 x 227 image (efficiently batched)", "time",
        "--", setting="AlexNet", unit=" ms", note="5.4 ms for a single image by itself (footnote 1)"),
    "fcn.sec3_1.alexnet_dense.ms": PaperNumber(
        22, "fcn", "Sec. 3.1", "fully convolutional AlexNet, a 10 x 10 grid of outputs from a 500 x 500 image", "time",
        "--", setting="AlexNet", unit=" ms"),
    "fcn.sec3_1.dense.speedup": PaperNumber(
        "> 5x", "fcn", "Sec. 3.1", "fully convolutional vs the naive approach (100 windows one by one)", "speed-up",
        "--", setting="AlexNet"),
    "fcn.sec3_1.dense.equivalence": PaperNumber(
        "equivalent", "fcn", "Sec. 3.1", "the resulting maps vs the original net on the input patches", "scores", "--",
        note="\"the resulting maps are equivalent to the evaluation of the original net on particular input patches\""),
    # Table 2: skip FCNs on a subset of PASCAL VOC2011 validation (footnote 7); FCN-32s = FCN-VGG16 trained on the
    # 8498 SBD images (Sec. 4.3 "More Training Data"). The same three numbers are in the text of Sec. 4.1-4.2.
    "fcn.table2.fcn32s.mean_iu": PaperNumber(
        59.4, "fcn", "Table 2", "FCN-32s", "mean IU", "PASCAL VOC 2011 val (segval subset)", setting="VGG16, ImageNet init"),
    "fcn.table2.fcn16s.mean_iu": PaperNumber(
        62.4, "fcn", "Table 2", "FCN-16s", "mean IU", "PASCAL VOC 2011 val (segval subset)",
        setting="VGG16, initialised from FCN-32s"),
    "fcn.table2.fcn8s.mean_iu": PaperNumber(
        62.7, "fcn", "Table 2", "FCN-8s", "mean IU", "PASCAL VOC 2011 val (segval subset)",
        setting="VGG16, initialised from FCN-16s"),
    # Sec. 4.3 "Optimization" (the CVPR paper; momentum 0.99 with an unnormalised loss and one image per step are the
    # released solvers' settings, voc-fcn32s/solver.prototxt of shelhamer/fcn.berkeleyvision.org)
    "fcn.sec4_3.optimizer.momentum": PaperNumber(
        0.9, "fcn", "Sec. 4.3", "Optimization: SGD with momentum", "momentum", "PASCAL VOC 2011 train"),
    "fcn.sec4_3.optimizer.minibatch": PaperNumber(
        20, "fcn", "Sec. 4.3", "Optimization", "minibatch (images)", "PASCAL VOC 2011 train"),
    "fcn.sec4_3.optimizer.lr_vgg16": PaperNumber(
        1e-4, "fcn", "Sec. 4.3", "Optimization: fixed learning rate, chosen by line search", "learning rate",
        "PASCAL VOC 2011 train", setting="FCN-VGG16", note="doubled for biases"),
    "fcn.sec4_2.stage.lr_drop": PaperNumber(
        100, "fcn", "Sec. 4.2", "FCN-16s from FCN-32s: \"The learning rate is decreased by a factor of 100\"",
        "learning-rate divisor", "PASCAL VOC 2011 train", unit="x"),

    # --- U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): chapter 03 ---------------------------------------------
    "unet.sec3.optimizer.momentum": PaperNumber(
        0.99, "unet", "Sec. 3", "Training: \"we use a high momentum (0.99)\"", "momentum", "--",
        note="SGD (Caffe), the batch reduced to a single image to favour large input tiles"),
    "unet.sec3.optimizer.batch": PaperNumber(
        1, "unet", "Sec. 3", "Training: \"reduce the batch to a single image\"", "batch (tiles)", "--"),
    "unet.sec3.weight_map.separation": PaperNumber(
        "border term separates touching cells", "unet", "Sec. 3", "the weight map of eq. 2: \"to force the network to "
        "learn the small separation borders that we introduce between touching cells\" (Fig. 3c, d)",
        "separation of touching cells", "--", note="stated in words and shown in Fig. 3d, not measured in a table"),
    "unet.table1.unet.warping_error": PaperNumber(
        0.0003529, "unet", "Sec. 4 (Table 1)", "u-net", "warping error", "ISBI 2012 EM segmentation challenge, test",
        note="averaged over 7 rotated versions of the input; Table 1 prints it rounded"),
    "unet.table1.unet.rand_error": PaperNumber(
        0.0382, "unet", "Sec. 4 (Table 1)", "u-net", "Rand error", "ISBI 2012 EM segmentation challenge, test",
        note="averaged over 7 rotated versions of the input"),
    "unet.table2.phc_u373.iou": PaperNumber(
        92, "unet", "Sec. 4 (Table 2)", "u-net (2015)", "average IOU", "ISBI cell tracking challenge 2015, PhC-U373",
        unit=" %", note="the second best reached 83 %"),
    "unet.table2.dic_hela.iou": PaperNumber(
        77.5, "unet", "Sec. 4 (Table 2)", "u-net (2015)", "average IOU", "ISBI cell tracking challenge 2015, DIC-HeLa",
        unit=" %", note="as the text of Sec. 4 gives it; the second best reached 46 %"),
}

# --- EFPN (Deng et al., IEEE TMM 2021): chapter 08 -------------------------------------------------------------------
# Quoted from the journal version (the course's source text; DOI 10.1109/TMM.2021.3074273). The arXiv version
# (2003.07021) was withdrawn by its authors ("a part of important claims cannot stand solidly").
PAPERS["efpn"] = ("Deng, Wang, Liu, Liu et al., \"Extended Feature Pyramid Network for Small Object Detection\", IEEE "
                  "Transactions on Multimedia 2021 (DOI 10.1109/TMM.2021.3074273; arXiv:2003.07021, withdrawn)")


def _efpn_rows(key: str, table: str, dataset: str, setting: str, columns: list[str], rows: dict[str, tuple[str, list]],
               note: str = "") -> dict[str, PaperNumber]:
    """One entry per (row, column) of an EFPN table, keyed efpn.<table>.<row>.<column>."""
    out = {}
    for row_key, (row_text, values) in rows.items():
        for column, v in zip(columns, values):
            unit = " s" if column == "runtime_s" else " MB" if column == "memory_mb" else ""
            out[f"efpn.{key}.{row_key}.{column}"] = PaperNumber(
                v, "efpn", table, row_text, column.replace("_", " "), dataset, setting=setting, unit=unit, note=note)
    return out


_SML = [f"{size}_{m}" for size in ("small", "medium", "large") for m in ("acc", "rec", "f1")]
NUMBERS.update({
    "efpn.table1.c2.side": PaperNumber(200, "efpn", "Table I", "800 x 800 input, stage 2 output C2", "side (px)", "--",
                                       setting="ResNet/ResNeXt"),
    "efpn.table1.c2_prime.side": PaperNumber(400, "efpn", "Table I", "800 x 800 input, stage 2 output C2' (no max pool)",
                                             "side (px)", "--", setting="ResNet/ResNeXt"),
    "efpn.sec4_a3.small_roi.coco": PaperNumber(112, "efpn", "Sec. IV-A3", "RoIs smaller than this go to P2' (shorter "
                                               "side 800)", "RoI size (px)", "MS COCO"),
    "efpn.sec4_a3.small_roi.tt100k": PaperNumber(56, "efpn", "Sec. IV-A3", "RoIs smaller than this go to P2' (images "
                                                 "1400 x 1400)", "RoI size (px)", "Tsinghua-Tencent 100K"),
    "efpn.sec4_a3.lambda.value": PaperNumber(1.0, "efpn", "Sec. IV-A3", "weight lambda of the positive patch loss",
                                             "lambda", "--"),
    "efpn.sec4_a3.residual_blocks.count": PaperNumber(2, "efpn", "Sec. IV-A3", "residual blocks in the content and in "
                                                      "the texture extractor", "blocks", "--"),
    **{f"efpn.sec4_b3.lambda_{k}.small_f1": PaperNumber(v, "efpn", "Sec. IV-B3", f"lambda = {k.replace('_', '.')}",
                                                        "F1 small", "Tsinghua-Tencent 100K test", setting="ResNeXt-101")
       for k, v in (("0_5", 84.8), ("1_0", 85.3), ("1_5", 85.1))},
    **_efpn_rows("table2", "Table II", "Tsinghua-Tencent 100K test", "ResNeXt-101", _SML, {
        "fpn": ("no component (FPN baseline)", [80.2, 86.9, 83.4, 94.4, 94.4, 94.4, 92.9, 93.0, 92.9]),
        "extension": ("extended pyramid level", [80.4, 86.9, 83.5, 94.2, 94.5, 94.4, 93.0, 93.0, 93.0]),
        "distillation": ("+ cross resolution distillation", [82.8, 86.1, 84.4, 95.6, 94.2, 94.9, 95.0, 91.9, 93.4]),
        "efpn": ("+ feature texture transfer (EFPN)", [83.6, 87.1, 85.3, 95.0, 95.2, 95.1, 92.8, 93.2, 93.0]),
    }, note="rows 2-3 use a three-layer ESPCN in place of FTT (Sec. IV-B2)"),
    **_efpn_rows("table3", "Table III", "Tsinghua-Tencent 100K test", "ResNeXt-101", ["f1_small", "f1_medium", "f1_large",
                                                                            "runtime_s", "memory_mb"], {
        "fpn_1400": ("FPN-1400", [83.4, 94.4, 92.9, 0.45, 2285]),
        "fpn_2800": ("FPN-2800", [85.0, 94.2, 72.1, 1.42, 6349]),
        "fpn_1400_p2_2800": ("FPN-1400 + P2-2800", [85.0, 95.0, 93.1, 1.68, 7217]),
        "efpn_1400_no_ftt": ("EFPN-1400 w/o FTT", [83.8, 94.8, 93.1, 0.84, 4767]),
        "efpn_1400": ("EFPN-1400", [85.3, 95.1, 93.0, 1.05, 4899]),
    }, note="a single GTX 1080Ti (Sec. IV-B1)"),
    **_efpn_rows("table4", "Table IV", "Tsinghua-Tencent 100K test", "ResNeXt-101, ESPCN in place of FTT", _SML, {
        "none": ("no distillation loss", [80.4, 86.9, 83.5, 94.2, 94.5, 94.4, 93.0, 93.0, 93.0]),
        "extended_level": ("loss on the extended level (global L1)", [80.6, 87.0, 83.7, 94.0, 94.4, 94.2, 93.4, 92.6,
                                                                        93.1]),
        "balanced": ("+ balanced loss", [81.6, 86.8, 84.1, 94.9, 94.5, 94.7, 94.4, 92.2, 93.3]),
        "ftt_loss": ("+ loss on feature texture transfer", [82.8, 86.1, 84.4, 95.6, 94.2, 94.9, 95.0, 91.9, 93.4]),
    }),
    **_efpn_rows("table8", "Table VIII", "Tsinghua-Tencent 100K test", "", ["aps", "ars", "apm", "apl", "map"], {
        "r50_fpn": ("FRCNN w FPN, ResNet-50", [74.5, 84.1, 79.7, 92.8, 75.8]),
        "r50_efpn": ("FRCNN w EFPN, ResNet-50", [75.8, 85.6, 80.8, 93.5, 77.0]),
        "x101_fpn": ("FRCNN w FPN, ResNeXt-101", [79.6, 87.2, 79.9, 90.2, 75.5]),
        "x101_efpn": ("FRCNN w EFPN, ResNeXt-101", [81.7, 90.5, 82.0, 90.8, 77.6]),
    }),
    **_efpn_rows("table9", "Table IX", "MS COCO val", "", ["aps", "ars", "apm", "apl", "map"], {
        "r50_fpn": ("FRCNN w FPN, ResNet-50", [20.9, 31.5, 40.5, 48.9, 37.3]),
        "r50_efpn": ("FRCNN w EFPN, ResNet-50", [22.7, 38.1, 41.0, 49.4, 38.2]),
        "x101_fpn": ("FRCNN w FPN, ResNeXt-101", [24.7, 36.0, 45.2, 53.2, 41.1]),
        "x101_efpn": ("FRCNN w EFPN, ResNeXt-101", [26.8, 41.5, 46.1, 53.8, 42.3]),
    }),
})



def _add(key: str, *args, **kwargs) -> None:
    if key in NUMBERS:
        raise KeyError(f"papers.py: {key!r} is registered twice")
    NUMBERS[key] = PaperNumber(*args, **kwargs)


# --- R-CNN (Girshick et al., CVPR 2014) ---------------------------------------------------------------------------
# Chapters 3b-7. Each entry below was checked against a transcription of the paper's own text reached with the
# search tool: R-CNN sec. 2.1 / appendix A; Fast R-CNN Table 4 (and its caption: K40 GPU); Faster R-CNN sec. 3.3,
# Tables 3 and 5; FPN Tables 1-3 (captions: ResNet-50, trainval35k -> minival; sec. 5.2.1-5.2.2: no feature sharing).
_add("rcnn.sec2_1.input_size", 227, "rcnn", "Sec. 2.1", "feature extraction: the warped region fed to the CNN",
     "pixels (side)", "PASCAL VOC", "AlexNet (the VGG16 variant of the later version takes 224 x 224)")
_add("rcnn.appendix_a.context", 16, "rcnn", "Appendix A", "warping with context padding p", "pixels",
     "PASCAL VOC", "in the warped frame")

# --- Fast R-CNN (Girshick, ICCV 2015) ------------------------------------------------------------------------------
_VOC07 = "PASCAL VOC 2007 test"
_add("fast_rcnn.table4.rcnn.train_hours", 84, "fast_rcnn", "Table 4", "R-CNN, model L", "train time (h)", _VOC07,
     "VGG16", " h", "Nvidia K40 GPU")
_add("fast_rcnn.table4.fast.train_hours", 9.5, "fast_rcnn", "Table 4", "Fast R-CNN, model L", "train time (h)", _VOC07,
     "VGG16", " h", "Nvidia K40 GPU")
_add("fast_rcnn.table4.rcnn.test_s", 47.0, "fast_rcnn", "Table 4", "R-CNN, model L", "test rate (s/im)", _VOC07,
     "VGG16", " s", "Nvidia K40 GPU")
_add("fast_rcnn.table4.fast.test_s", 0.32, "fast_rcnn", "Table 4", "Fast R-CNN, model L", "test rate (s/im)", _VOC07,
     "VGG16, without truncated SVD", " s", "Nvidia K40 GPU")
_add("fast_rcnn.table4.fast.test_s_svd", 0.22, "fast_rcnn", "Table 4", "Fast R-CNN, model L, with SVD",
     "test rate (s/im)", _VOC07, "VGG16, truncated SVD of fc6/fc7", " s")
_add("fast_rcnn.table4.fast.test_speedup", 146, "fast_rcnn", "Table 4", "Fast R-CNN, model L: test speedup",
     "vs R-CNN", _VOC07, "VGG16, without truncated SVD", "x")
_add("fast_rcnn.table4.fast.test_speedup_svd", 213, "fast_rcnn", "Table 4", "Fast R-CNN, model L, with SVD: test speedup",
     "vs R-CNN", _VOC07, "VGG16, truncated SVD", "x", "also in the abstract")
_add("fast_rcnn.table4.fast.train_speedup", 8.8, "fast_rcnn", "Table 4", "Fast R-CNN, model L: train speedup",
     "vs R-CNN", _VOC07, "VGG16", "x")
_add("fast_rcnn.table4.rcnn.map", 66.0, "fast_rcnn", "Table 4", "R-CNN, model L", "VOC07 mAP", _VOC07, "VGG16")
_add("fast_rcnn.table4.fast.map", 66.9, "fast_rcnn", "Table 4", "Fast R-CNN, model L", "VOC07 mAP", _VOC07,
     "VGG16, without truncated SVD")

# --- Faster R-CNN (Ren et al., NeurIPS 2015) -----------------------------------------------------------------------
_add("faster_rcnn.table3.rpn_vgg_0712.map", 73.2, "faster_rcnn", "Table 3", "RPN, 300 proposals, shared, 07+12",
     "mAP (%)", _VOC07, "VGG-16, Fast R-CNN detector", note="also in the abstract")
_add("faster_rcnn.sec3_3.anchors_1000x600", 20000, "faster_rcnn", "Sec. 3.3", "implementation details: a typical "
     "1000 x 600 image, roughly 60 x 40 x 9 anchors", "anchors per image", "PASCAL VOC", "VGG-16, stride 16, k = 9",
     note="'roughly 20000'")
_add("faster_rcnn.sec3_3.anchors_inside", 6000, "faster_rcnn", "Sec. 3.3", "implementation details: cross-boundary "
     "anchors ignored", "anchors per image for training", "PASCAL VOC", "VGG-16, stride 16, k = 9", note="'about 6000'")
# Table 2 (VOC 2007 trainval -> test, the Fast R-CNN detector on ZF, the proposals used to train and to test it) and
# Fig. 4 (recall vs IoU at 300 / 1000 / 2000 proposals): chapter 5's proposal comparison. Table 2's two rows checked
# with the search tool against several public transcriptions of the table with its caption ("The detectors are Fast
# R-CNN with ZF, but using various proposal methods for training and testing": SS 2000 / SS 2000 58.7, RPN+ZF shared
# 2000 / 300 59.9; the mismatched row, trained on SS 2000 and tested on RPN+ZF 300, is 56.8). Fig. 4 has no numbers.
_add("faster_rcnn.table2.ss_2000.map", 58.7, "faster_rcnn", "Table 2", "train: SS 2000, test: SS 2000", "mAP (%)",
     _VOC07, "ZF, Fast R-CNN detector, trained on VOC 2007 trainval")
_add("faster_rcnn.table2.rpn_zf_shared_300.map", 59.9, "faster_rcnn", "Table 2",
     "train: RPN+ZF, shared (2000), test: RPN+ZF, shared (300)", "mAP (%)", _VOC07,
     "ZF, Fast R-CNN detector, trained on VOC 2007 trainval", note="sec. 4.1: 'competitive results ... while using "
     "up to 300 proposals'")
_add("faster_rcnn.fig4.recall_300", "RPN above SS", "faster_rcnn", "Fig. 4", "300 proposals: recall vs IoU overlap "
     "ratio, RPN (ZF, VGG) and SS", "recall at IoU 0.5-0.7", _VOC07, note="read from the curves (no table); sec. 4.1: "
     "'the RPN method behaves gracefully when the number of proposals drops from 2000 to 300'")
_add("faster_rcnn.table5.rpn_vgg.fps", 5, "faster_rcnn", "Table 5", "VGG, RPN + Fast R-CNN", "rate (fps)", _VOC07,
     "VGG-16", " fps", "K40 GPU, all steps; also in the abstract")
_add("faster_rcnn.table5.ss_vgg.fps", 0.5, "faster_rcnn", "Table 5", "VGG, SS + Fast R-CNN", "rate (fps)", _VOC07,
     "VGG-16", " fps", "selective search on a CPU")
_add("faster_rcnn.table5.ss.proposal_s", 1.51, "faster_rcnn", "Table 5", "SS + Fast R-CNN, proposal", "time (s)",
     _VOC07, "selective search", " s", "1510 ms on a CPU")
_add("faster_rcnn.table5.rpn_vgg.proposal_s", 0.01, "faster_rcnn", "Table 5", "VGG, RPN + Fast R-CNN, proposal",
     "time (s)", _VOC07, "VGG-16", " s", "10 ms on a K40 GPU")

# --- FPN (Lin et al., CVPR 2017): ResNet-50, COCO minival, trained on trainval35k -----------------------------------
_MINIVAL = "COCO minival"
for _row, _name, _ar1k in (("a", "(a) RPN baseline on conv4", 48.3), ("c", "(c) FPN", 56.3),
                           ("d", "(d) bottom-up pyramid", 49.5), ("e", "(e) top-down pyramid, w/o lateral", 46.1),
                           ("f", "(f) only finest level", 51.3)):
    _add(f"fpn.table1.{_row}.ar1k", _ar1k, "fpn", "Table 1", _name, "AR1k", _MINIVAL, "ResNet-50, RPN proposals")
for _row, _name, _ap, _aps in (("c", "(c) FPN", 33.9, 17.8), ("d", "(d) bottom-up pyramid", 24.9, 10.9),
                               ("e", "(e) top-down pyramid, w/o lateral", 31.3, 13.3),
                               ("f", "(f) only finest level", 33.4, 17.3)):
    _add(f"fpn.table2.{_row}.ap", _ap, "fpn", "Table 2", _name, "AP", _MINIVAL,
         "ResNet-50, Fast R-CNN on the fixed proposals of Table 1(c)")
    _add(f"fpn.table2.{_row}.aps", _aps, "fpn", "Table 2", _name, "AP_s", _MINIVAL,
         "ResNet-50, Fast R-CNN on the fixed proposals of Table 1(c)")
for _row, _name, _vals in (("a", "(a) baseline on conv4 (C4)", (31.6, 53.1, 13.2, 35.6, 47.1)),
                           ("c", "(c) FPN", (33.9, 56.9, 17.8, 37.7, 45.8))):
    for _col, _v in zip(("ap", "ap50", "aps", "apm", "apl"), _vals):
        _add(f"fpn.table3.{_row}.{_col}", _v, "fpn", "Table 3", _name,
             {"ap": "AP", "ap50": "AP@0.5", "aps": "AP_s", "apm": "AP_m", "apl": "AP_l"}[_col], _MINIVAL,
             "ResNet-50, Faster R-CNN: RPN and Fast R-CNN on the same backbone, features not shared (sec. 5.2.2)")


# --- R-FCN (Dai, Li, He & Sun, NeurIPS 2016): chapter 06 ----------------------------------------------------------
PAPERS["rfcn"] = ("Dai, Li, He & Sun, \"R-FCN: Object Detection via Region-based Fully Convolutional Networks\", "
                  "NeurIPS 2016 (arXiv:1605.06409)")
# Checked with the search tool: the abstract against the paper's text (arXiv v2); Table 3 and Table 4's 83.6 row
# against a public transcription of those tables with their captions; Table 2 (all six rows, 61.7 included) against
# a public bilingual transcription of the paper's English text, which reproduces the table and sec. 4.1's "the mAP
# further drops by a large margin to 61.7% (Table 2)"; Table 6's two baselines against sec. 4.2 in the same text:
# "Our single-scale trained R-FCN baseline has a val result of 48.9%/27.6%. This is comparable to the Faster R-CNN
# baseline (48.4%/27.2%)" (AP@0.5 / AP@[0.5, 0.95], the columns of Table 6).
_add("rfcn.abstract.voc07.map", 83.6, "rfcn", "Abstract", "R-FCN, multi-scale training, 07+12+COCO (Table 4)",
     "mAP (%)", _VOC07, "ResNet-101")
_add("rfcn.abstract.test_s", 0.17, "rfcn", "Abstract", "test-time speed", "s/img", _VOC07, "ResNet-101", " s",
     "\"170ms per image, 2.5-20x faster than the Faster R-CNN counterpart\"")
for _row, _name, _map in (("naive_1x1", "naive Faster R-CNN, RoI output 1 x 1", 61.7),
                          ("naive_7x7", "naive Faster R-CNN, RoI output 7 x 7", 68.9),
                          ("class_specific_rpn", "class-specific RPN", 67.6),
                          ("k1", "R-FCN, k = 1 (no position sensitivity)", "fail"),
                          ("k3", "R-FCN, k = 3", 75.5), ("k7", "R-FCN, k = 7", 76.6)):
    _add(f"rfcn.table2.{_row}.map", _map, "rfcn", "Table 2", _name, "mAP (%)", _VOC07,
         "ResNet-101, fully convolutional strategies, no OHEM")
for _row, _name, _train, _test, _map in (
        ("faster_rcnn", "Faster R-CNN (10 per-RoI layers), no OHEM", 1.2, 0.42, 76.4),
        ("rfcn", "R-FCN (0 per-RoI layers), no OHEM", 0.45, 0.17, 76.6),
        ("faster_rcnn_ohem300", "Faster R-CNN, OHEM 300 RoIs", 1.5, 0.42, 79.3),
        ("rfcn_ohem300", "R-FCN, OHEM 300 RoIs", 0.45, 0.17, 79.5),
        ("faster_rcnn_ohem2000", "Faster R-CNN, OHEM 2000 RoIs", 2.9, 0.42, None),
        ("rfcn_ohem2000", "R-FCN, OHEM 2000 RoIs", 0.46, 0.17, 79.3)):
    _add(f"rfcn.table3.{_row}.train_s", _train, "rfcn", "Table 3", _name, "training (s/img)", _VOC07, "ResNet-101",
         " s", "a single Nvidia K40 GPU")
    _add(f"rfcn.table3.{_row}.test_s", _test, "rfcn", "Table 3", _name, "testing (s/img)", _VOC07, "ResNet-101",
         " s", "a single Nvidia K40 GPU; 300 RoIs for testing")
    if _map is not None:
        _add(f"rfcn.table3.{_row}.map", _map, "rfcn", "Table 3", _name, "mAP (%)", _VOC07, "ResNet-101")
for _row, _name, _ap50, _ap in (("faster_rcnn", "Faster R-CNN, trained on COCO train, tested on val", 48.4, 27.2),
                                ("rfcn", "R-FCN, trained on COCO train, tested on val", 48.9, 27.6)):
    _add(f"rfcn.table6.{_row}.ap50", _ap50, "rfcn", "Table 6", _name, "AP@0.5 (%)", "MS COCO val", "ResNet-101")
    _add(f"rfcn.table6.{_row}.ap", _ap, "rfcn", "Table 6", _name, "AP@[0.5, 0.95] (%)", "MS COCO val", "ResNet-101")


# --- The papers' training recipes (course_lib/recipes.py builds its table from these): chapters 02-08 ---------------
# Each quoted from a public transcription of the paper's text found with the search tool (the quotes are in
# course_lib/recipes.py beside the recipe that reads them). What a paper does not state is not here: recipes.py takes
# it from the authors' released solver/config files and says so.
_VOC_SEG = "PASCAL VOC 2011 train (+ SBD)"
_add("fcn.sec4_3.optimizer.weight_decay", "5e-4 or 2e-4", "fcn", "Sec. 4.3", "Optimization: \"weight decay of 5^-4 or "
     "2^-4\"", "weight decay", _VOC_SEG, note="the paper does not say which net takes which")
_add("fcn.sec4_1.fixed_lr.epochs", 175, "fcn", "Sec. 4.1", "\"best results achieved after convergence at a fixed "
     "learning rate (at least 175 epochs)\"", "epochs", "PASCAL VOC 2011 train")
_add("fcn.sec4_3.more_data.images", 8498, "fcn", "Sec. 4.3", "More Training Data: labels for \"a larger set of 8498 "
     "PASCAL training images\" (Hariharan et al.)", "training images", "SBD")
_add("fcn.sec4_3.finetune.days_fcn32s", 3, "fcn", "Sec. 4.3", "Fine-tuning: \"three days on a single GPU for the coarse "
     "FCN-32s version\"", "training time (days)", _VOC_SEG, "FCN-VGG16", " days", "an NVIDIA Tesla K40c (Implementation)")
_add("fcn.sec4_3.finetune.days_upgrade", 1, "fcn", "Sec. 4.3", "Fine-tuning: \"about one day each to upgrade to the "
     "FCN-16s and FCN-8s versions\"", "training time (days)", _VOC_SEG, "FCN-VGG16", " days", "an NVIDIA Tesla K40c")
_add("unet.sec5.training.hours", 10, "unet", "Sec. 5 (Conclusion)", "\"training time of only 10 hours on a NVidia Titan "
     "GPU (6 GB)\"", "training time (h)", "ISBI 2012 / cell tracking", unit=" h")
_add("rcnn.sec2_3.finetune.lr", 0.001, "rcnn", "Sec. 2.3", "Domain-specific fine-tuning: \"We start SGD at a learning "
     "rate of 0.001\"", "learning rate", "PASCAL VOC", "AlexNet")
_add("rcnn.sec2_3.finetune.batch", 128, "rcnn", "Sec. 2.3", "Domain-specific fine-tuning: \"32 positive windows ... and "
     "96 background windows to construct a mini-batch of size 128\"", "warped windows per mini-batch", "PASCAL VOC")
for _paper, _sec, _row, _vals in (
        ("fast_rcnn", "Sec. 2.3", "SGD hyper-parameters (VOC07 or VOC12 trainval)",
         dict(lr=0.001, iterations=30000, lr_low=0.0001, iterations_low=10000, momentum=0.9, weight_decay=0.0005)),
        ("faster_rcnn", "Sec. 3.1.3", "Training RPNs (PASCAL VOC)",
         dict(lr=0.001, iterations=60000, lr_low=0.0001, iterations_low=20000, momentum=0.9, weight_decay=0.0005)),
        ("rfcn", "Sec. 2", "Training (VOC)",
         dict(lr=0.001, iterations=20000, lr_low=0.0001, iterations_low=10000, momentum=0.9, weight_decay=0.0005)),
        ("fpn", "Sec. 5.2", "Implementation details (Fast/Faster R-CNN)",
         dict(lr=0.02, iterations=60000, lr_low=0.002, iterations_low=20000, momentum=0.9, weight_decay=0.0001))):
    _columns = {"lr": "learning rate", "iterations": "mini-batches at the first learning rate", "lr_low": "lowered "
                "learning rate", "iterations_low": "mini-batches at the lowered rate", "momentum": "momentum",
                "weight_decay": "weight decay"}
    _data = {"fast_rcnn": "PASCAL VOC 2007 trainval", "faster_rcnn": "PASCAL VOC", "rfcn": "PASCAL VOC 07+12 trainval",
             "fpn": "COCO trainval35k"}[_paper]
    for _col, _v in _vals.items():
        _add(f"{_paper}.sec{_sec.split()[-1].replace('.', '_')}.sgd.{_col}", _v, _paper, _sec, _row, _columns[_col], _data)
_add("fast_rcnn.sec2_3.minibatch.images", 2, "fast_rcnn", "Sec. 2.3", "Mini-batch sampling: \"constructed from N = 2 "
     "images\"", "images per mini-batch", "PASCAL VOC")
_add("fast_rcnn.sec2_3.minibatch.rois", 128, "fast_rcnn", "Sec. 2.3", "Mini-batch sampling: \"mini-batches of size "
     "R = 128, sampling 64 RoIs from each image\"", "RoIs per mini-batch", "PASCAL VOC")
_add("fast_rcnn.sec5_2.scale.min_size", 600, "fast_rcnn", "Sec. 5.2", "\"All single-scale experiments use s = 600 "
     "pixels\"", "shorter side (px)", "PASCAL VOC")
_add("fast_rcnn.sec5_2.scale.max_size", 1000, "fast_rcnn", "Sec. 5.2", "\"we cap the longest image side at 1000 "
     "pixels\"", "longer side cap (px)", "PASCAL VOC")
_add("faster_rcnn.sec3_1_3.minibatch.images", 1, "faster_rcnn", "Sec. 3.1.3", "\"Each mini-batch arises from a single "
     "image\"", "images per mini-batch", "PASCAL VOC")
_add("faster_rcnn.sec3_3.scale.min_size", 600, "faster_rcnn", "Sec. 3.3", "\"We re-scale the images such that their "
     "shorter side is s = 600 pixels\"", "shorter side (px)", "PASCAL VOC")
_add("rfcn.sec2.training.min_size", 600, "rfcn", "Sec. 2", "Training: \"the scale (shorter side of image) is 600 "
     "pixels\"", "shorter side (px)", "PASCAL VOC 07+12 trainval")
_add("rfcn.sec2.training.images_per_gpu", 1, "rfcn", "Sec. 2", "Training: \"Each GPU holds 1 image and selects B = 128 "
     "RoIs for backprop\"", "images per GPU", "PASCAL VOC 07+12 trainval")
_add("rfcn.sec2.training.gpus", 8, "rfcn", "Sec. 2", "Training: \"We train the model with 8 GPUs\"", "GPUs",
     "PASCAL VOC 07+12 trainval")
_add("fpn.sec5_2.training.min_size", 800, "fpn", "Sec. 5.2", "Implementation details: \"its shorter side has 800 "
     "pixels\"", "shorter side (px)", "COCO trainval35k")
_add("fpn.sec5_2.training.gpus", 8, "fpn", "Sec. 5.2", "Implementation details: \"Synchronized SGD is used to train "
     "the model on 8 GPUs\"", "GPUs", "COCO trainval35k")
_add("fpn.sec5_2.training.images_per_gpu", 2, "fpn", "Sec. 5.2", "Implementation details: \"Each mini-batch involves 2 "
     "image per GPU and 512 RoIs per image\"", "images per GPU", "COCO trainval35k")
_add("fpn.sec5_2.training.hours", 10, "fpn", "Sec. 5.2", "Implementation details: \"Training Fast R-CNN with FPN takes "
     "about 10 hours on the COCO dataset\"", "training time (h)", "COCO trainval35k", "ResNet-50, 8 GPUs", " h")
_add("efpn.sec4_a3.tt100k.input_size", 1400, "efpn", "Sec. IV-A3", "Tsinghua-Tencent 100K: \"Images are resized to "
     "1400 x 1400\"", "side (px)", "Tsinghua-Tencent 100K")
_add("efpn.sec4_a3.coco.schedule", "Detectron", "efpn", "Sec. IV-A3", "MS COCO: \"we follow the training scheme in "
     "Detectron [41]\"", "training scheme", "MS COCO", note="the only schedule the paper gives, for any stage")


def number(key: str) -> PaperNumber:
    """The registry entry ``key``; an unknown key is an error that suggests the closest ones."""
    try:
        return NUMBERS[key]
    except KeyError:
        close = difflib.get_close_matches(key, NUMBERS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"No paper number {key!r} in course_lib/papers.py.{hint}") from None


def value(key: str) -> float | int | str:
    """The number itself (e.g. 36.2), as the paper prints it."""
    return number(key).value


def cite(key: str) -> str:
    """``"<paper> -- <table>, <row>, <column> (<dataset>, <setting>)"``: where to find the number."""
    return number(key).cite()


@dataclass
class BesideThePaper:
    """What we measured beside what the paper reports, one row per quantity; shows as a table in a notebook.

    ``rows`` holds ``(label, ours, key)`` with ``ours`` a number (or None when not measured in this profile) and
    ``key`` a papers.NUMBERS key (or None when the paper has no such number).
    """

    title: str
    rows: list[tuple[str, float | int | str | None, str | None]]
    ours_label: str = "ours"
    note: str = ""

    def __post_init__(self):
        for _, _, key in self.rows:
            if key is not None:
                number(key)  # fail now, with a suggestion, not when the table is shown

    def records(self) -> list[dict]:
        """One dict per row: label, ours, paper (value), source (citation)."""
        out = []
        for label, ours, key in self.rows:
            entry = number(key) if key is not None else None
            out.append({"label": label, "ours": ours, "paper": None if entry is None else entry.value,
                        "paper_text": "--" if entry is None else entry.formatted(),
                        "source": "--" if entry is None else f"{entry.table}, {entry.row}".rstrip(", ")})
        return out

    @staticmethod
    def _fmt(x) -> str:
        if x is None:
            return "--"
        if isinstance(x, float):
            return f"{x:.3g}"
        return str(x)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", f"| | {self.ours_label} | paper | where in the paper |", "|---|---|---|---|"]
        for r in self.records():
            lines.append(f"| {r['label']} | {self._fmt(r['ours'])} | {r['paper_text']} | {r['source']} |")
        papers_used = sorted({number(k).paper for _, _, k in self.rows if k is not None})
        lines += ["", "Sources: " + "; ".join(PAPERS[p] for p in papers_used)] if papers_used else []
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        e = html.escape
        head = (f"<b>{e(self.title)}</b><table><tr><th></th><th>{e(self.ours_label)}</th><th>paper</th>"
                "<th>where in the paper</th></tr>")
        body = "".join(f"<tr><td>{e(r['label'])}</td><td>{e(self._fmt(r['ours']))}</td><td>{e(r['paper_text'])}</td>"
                       f"<td>{e(r['source'])}</td></tr>" for r in self.records())
        papers_used = sorted({number(k).paper for _, _, k in self.rows if k is not None})
        foot = ("<p><small>Sources: " + "; ".join(e(PAPERS[p]) for p in papers_used) + "</small></p>") if papers_used else ""
        note = f"<p><small>{e(self.note)}</small></p>" if self.note else ""
        return head + body + "</table>" + foot + note

    def __repr__(self) -> str:
        return self.to_markdown()


def beside_the_paper(rows, *, title: str, ours_label: str = "ours", note: str = "") -> BesideThePaper:
    """A "beside the paper" table: ``rows`` = ``[(label, ours, key), ...]`` (see :class:`BesideThePaper`)."""
    return BesideThePaper(title=title, rows=[tuple(r) for r in rows], ours_label=ours_label, note=note)
