"""`python -m open_clip_dive.losses [FILTER]`: the registered losses, one line each."""

import sys

from . import describe_loss, list_losses


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = list_losses(argv[0] if argv else "")
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe_loss(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
