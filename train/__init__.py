"""The trainer: SuDoRM-RF with unified gradient reweighting, in layers that import one way.

    commands/     the command lines (``python -m train``, ``train.evaluate``, ``.separate``,
                  ``.report``, ``.reproduce``; the modules of those names here start them)
       |
    run/          the training run: RunConfig, Trainer, the step, distributed control
       |
    evaluation/   scoring a model, the paper's tables, plots, comparing runs, separation
       |
    data/  run_folder  (and model/)   audio and mixtures; the run folder's files
       |
    ugr_kernels   (public names)

Nothing imports a layer above its own (``tests/test_imports.py`` checks it).
"""
