"""Declares torchvision's two C++ operator schemas before torchvision is imported.

PyPI's torchvision wheel is built against CUDA torch; with torch 2.13+cpu its C++ extension does not load, and
`import torchvision` (hence timm, lightning's torchmetrics) fails with "operator torchvision::nms does not exist".
Declaring the schemas (as torchvision's csrc/ops/nms.cpp and quantized/cpu/qnms_kernel.cpp define them) lets the
Python side import; the operators themselves are never called by the fixtures or tests.

    import torchvision_ops; torchvision_ops.declare()   # before importing torchvision, timm, lightning
"""
import torch

_LIB = None


def declare():
    global _LIB
    if _LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # a working torchvision extension is already loaded
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib
