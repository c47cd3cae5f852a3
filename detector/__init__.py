"""Faster R-CNN on ResNet backbones with the ResNet paper's detection tricks."""

from detector.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
