"""Test-time components: config-free wrappers with the detector's interface.

Wrappers built around a trained (staged) detector: :mod:`box_refinement`,
:mod:`multiscale_paper`, :mod:`multiscale_flip`, :mod:`ensemble`; pure functions:
:mod:`scale_selection` (SPP-net scale pairs, maxout), :mod:`resize` (test-time geometry),
:mod:`wbf` (weighted boxes fusion via ``ensemble-boxes``). Post-processing and box voting are
the detector's own (:mod:`detector.modeling.postprocess`). The ``test`` and ``ensemble``
config groups are turned into these modules by :func:`detector.engine.build.build_test_model`.
"""
