"""``python -m kdistill``: the ``kdistill`` command, also as torchrun starts it (``torchrun ... -m kdistill distill``)."""

from kdistill.cli.app import main

main()
