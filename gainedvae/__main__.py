"""``python -m gainedvae ...`` runs the ``gainedvae`` command (see :mod:`gainedvae.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
