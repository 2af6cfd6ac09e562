"""Mask R-CNN (ResNet50 + FPN) network stages, one module per stage.

- ``resnet50``: ResNet50 backbone (model-zoo parameter names) -> C2..C5
- ``fpn``: feature pyramid C2..C5 -> P2..P6
- ``anchors``, ``box_ops``: anchor constants and box geometry
- ``rpn``: RPN head; ``proposals``: proposal generator; ``assigners``: training targets
- ``roi_align``: multi-level RoIAlign; ``box_head``, ``mask_head``: RoI heads
- ``losses``: loss functions
- ``mask_rcnn``: ``Mask_Rcnn_Resnet50`` and ``build_model(config)``, which wire them together

Submodules are imported explicitly (``from src.maskrcnn.mask_rcnn import build_model``) so that
importing one stage does not build the whole network module graph.
"""
