"""``python -m train``: see ``python -m train --help``."""
from .cli import parse_args
from .loop import Trainer


def main(argv=None):
    return Trainer(parse_args(argv)).run()


if __name__ == "__main__":
    main()
