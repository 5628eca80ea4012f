"""``python -m train``: see ``python -m train --help`` and ``train.commands.train``."""
from train.commands.train import main

if __name__ == "__main__":
    main()
