"""``python -m kdistill.cli``: the same as the ``kdistill`` command."""

from kdistill.cli.app import main

main()
