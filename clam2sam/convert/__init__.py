"""Conversion of a legacy archive into a store: plan, per-slide job, executors, booking.

Holds: the cohort-level driver and its settings (``cohort``), the per-slide job (``slide_job``), patch
membership in SAM segments (``membership``), label updates (``labels``), the convert report
(``report``) and the executors that run the jobs (serial, process pool, Dask).

May import: ``clam2sam.sources``, ``clam2sam.sam``, ``clam2sam.store`` and the core modules. Never
``inspect`` or ``cli``.
"""
