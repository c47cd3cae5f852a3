"""Datasets, transforms and loaders: files -> dataset records -> transforms -> batches.

Every dataset follows the contract documented in :mod:`detector.data.base`. Import from the
modules themselves (``detector.data.coco``, ``detector.data.voc``, ...): this package imports
nothing, so light modules (``voc_layout``, ``errors``) load without torch.
"""
