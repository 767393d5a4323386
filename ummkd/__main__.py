"""``python -m ummkd`` is the same as the ``ummkd`` console script."""

from ummkd.cli import main

if __name__ == "__main__":
    main()
