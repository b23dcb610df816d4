"""The command line: one module per command, shared options, and the one error -> exit-code boundary.

The only place in ``clam2sam`` that imports click. ``main`` holds the ``clam2sam`` group; ``convert``,
``inspect`` and ``export`` one command each; ``options`` the options shared by both CLIs; ``sam_options``
the SAM pass options. ``samtrain`` (``trainer.cli``) uses the shared options and the boundary from here.

May import: every other ``clam2sam`` subpackage. Nothing imports it except ``trainer.cli``.
This ``__init__`` imports nothing, so that importing one module of it stays light.
"""
