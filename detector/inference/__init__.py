"""Test-time components: wrappers with the detector's interface built around a trained model.

Pure functions: :func:`~detector.inference.box_voting.box_voting`,
:func:`~detector.inference.wbf.weighted_boxes_fusion`,
:func:`~detector.inference.scale_selection.select_scale_pairs`,
:func:`~detector.inference.scale_selection.maxout_pool`. Wrappers: ``box_refinement``,
``multiscale_paper``, ``multiscale_flip``, ``ensemble``; ``build.build_test_model`` composes
them from the ``test`` and ``ensemble`` config groups (see docs/tricks.md).
"""
