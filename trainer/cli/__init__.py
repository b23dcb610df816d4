"""The ``samtrain`` command line: the group (``main``) and one module per command family.

``fit`` trains and evaluates; ``predict`` holds predict, eval and heatmap; ``compare`` holds compare and
report. Library modules of ``trainer`` never import click. The flags shared with ``clam2sam`` (``--out``,
``--slide``, ``--json``, ``-q``, ``--slides-dir``, ...) and every path type come from
:mod:`clam2sam.cli.options`; errors become exit codes in :mod:`clam2sam.cli.boundary`, shared with
``clam2sam``. This ``__init__`` imports nothing.
"""
