"""Evaluation and inference: scoring a model, the paper's tables, plots, comparing runs,
separating recordings.

Reads data (``train.data``), models (``model``) and run folders (``train.run_folder``);
never the trainer (``train.run``) nor the command lines.
"""
