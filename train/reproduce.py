"""``python -m train.reproduce``: the command line is ``train.commands.reproduce``."""
from train.commands.reproduce import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
