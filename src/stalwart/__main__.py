"""``python -m stalwart`` is the ``stalwart`` command."""

from stalwart.cli.main import main

main()
