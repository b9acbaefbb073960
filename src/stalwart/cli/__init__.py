"""The ``stalwart`` command."""
