"""The training run: its configuration (``RunConfig``), the ``Trainer``, the step on the
device, its metrics, data-parallel control, and the unfused baseline loss.

Reads data (``train.data``), models, run folders and evaluation; only the command lines
(``train.commands``) import it.
"""
