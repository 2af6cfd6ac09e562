"""Mask R-CNN (ResNet50 + FPN) network stages, one module per stage.

- ``resnet50``: ResNet50 backbone (model-zoo parameter names) -> C2..C5
- ``fpn``: feature pyramid C2..C5 -> P2..P6
- ``anchors``, ``box_ops``: anchor constants and box geometry
- ``rpn``: stage 1, RPN head, anchor targets and RPN loss; ``proposals``: proposal generator
- ``roi_align``: multi-level RoIAlign
- ``roi_heads``: stage 2, box head, RoI sampling and targets, box loss, detection post-processing
- ``mask_branch``: stage 3, mask head, mask targets, mask loss, mask inference
- ``sampling``: helpers shared by the target Cells; ``losses``: generic loss maths
- ``numerics``: the presets of numerical conventions
- ``mask_rcnn``: ``Mask_Rcnn_Resnet50``, which wires the stage Cells together
- ``builder``: ``build_model(config)``, the one place that reads the Config for the network

Submodules are imported explicitly (``from src.maskrcnn.builder import build_model``) so that
importing one stage does not build the whole network module graph.
"""
