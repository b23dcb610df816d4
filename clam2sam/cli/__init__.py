"""The command lines: one module per command, the options shared by both CLIs, and the one error -> exit-code
boundary.

The only place in ``clam2sam`` that imports click. ``main`` holds the ``clam2sam`` group and its command
table; ``convert``, ``inspect`` and ``export`` one command each; ``options`` the flags shared by the
commands of both CLIs, each declared once, and ``LocalPath`` (paths and ``file://`` URLs); ``sam_options``
the SAM pass flags; ``boundary`` ``run_cli`` (errors -> exit codes) and ``LazyConsole``; ``lazy_group`` the
click group that imports a command's module only when it runs. ``samtrain`` (``trainer.cli``) uses
``options``, ``boundary`` and ``lazy_group``, never ``main``.

May import: every other ``clam2sam`` subpackage. Nothing imports it except ``trainer.cli``.
This ``__init__`` imports nothing, so that importing one module of it stays light.
"""
