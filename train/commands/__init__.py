"""The command lines: ``python -m train``, ``train.evaluate``, ``train.separate``,
``train.report`` and ``train.reproduce`` (the modules of those names at the top of
``train`` start them), and the convention they share (``common``).

The top layer: it reads the run, evaluation, data and the run folder; nothing imports it.
"""
