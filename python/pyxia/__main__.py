"""``python -m pyxia`` runs the command line."""

from pyxia.cli import main

main()
