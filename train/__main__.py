"""``python -m train``: see ``python -m train --help``."""
import os
import sys

from .checkpoint import CheckpointError
from .cli import parse_args
from .loop import Trainer

# Problems with the user's files, flags or checkpoints: the message says it all.
USER_ERRORS = (ValueError, OSError, CheckpointError)


def main(argv=None):
    config = parse_args(argv)
    try:
        return Trainer(config).run()
    except USER_ERRORS as exc:
        if config.debug or os.environ.get("UGR_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {exc}\n(run with --debug or UGR_DEBUG=1 for the traceback)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
