"""The data layer: audio files, catalogues, synthetic sources, online mixing, the loader.

Imports nothing from the rest of ``train`` (the run, evaluation, the run folder and the
command lines read data; data reads none of them). The road from options to batches is
``train.data.loader``.
"""
