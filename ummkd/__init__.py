"""ummkd: unpaired multi-modal segmentation via knowledge distillation."""

__version__ = "0.1.0"
