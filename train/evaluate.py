"""``python -m train.evaluate``: the command line is ``train.commands.evaluate``."""
from train.commands.evaluate import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
