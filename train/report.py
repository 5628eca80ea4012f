"""``python -m train.report``: the command line is ``train.commands.report``."""
from train.commands.report import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
