"""Reading a finished store back: segment statistics, integrity checks and pictures.

Holds: per-slide and cohort statistics (``stats``), integrity checks (``checks``) and plots (``plots``).
Pure functions over a :class:`~clam2sam.store.reader.StoreReader`: no printing, no click.

May import: ``clam2sam.store`` and the core modules. Never ``sources``, ``sam``, ``convert`` or ``cli``.
"""
