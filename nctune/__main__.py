"""``python -m nctune``: the same command line as the ``nctune`` console script."""

from nctune.cli import main

if __name__ == "__main__":
    main()
