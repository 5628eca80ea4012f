"""``python -m train.separate``: the command line is ``train.commands.separate``."""
from train.commands.separate import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
