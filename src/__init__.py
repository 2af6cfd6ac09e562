"""Mask R-CNN (ResNet50 + FPN) fine-tuning pipeline for MindSpore."""
