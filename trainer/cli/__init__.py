"""The ``samtrain`` command line: the group (``main``) and one module per command family.

``fit`` trains and evaluates; ``predict`` holds predict, eval and heatmap; ``compare`` holds compare and
report. Library modules of ``trainer`` never import click; errors become exit codes in the boundary shared
with ``clam2sam``. This ``__init__`` imports nothing.
"""
