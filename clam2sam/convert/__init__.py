"""Conversion of a legacy archive into a store: settings, plan, per-slide job, executors, booking.

Holds: the settings of a run (``options``: one frozen :class:`ConvertOptions`, checked once), the
cohort-level driver (``cohort``: discovery, plan, resume), the per-slide job (``slide_job``: a frozen
``SlideJob`` carrying the options), patch membership in SAM segments (``membership``), label updates
(``labels``), the read-ahead of later slides' files (``read_ahead``), the executors that run the jobs and
yield per-slide outcomes (``executors``: serial and process pool; ``dask_executor``: Dask), the booking of
those outcomes (``booking``) and the convert report (``report``).

May import: ``clam2sam.sources``, ``clam2sam.sam``, ``clam2sam.store`` and the core modules. Never
``inspect`` or ``cli``.
"""
