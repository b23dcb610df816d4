"""Readers of the archives a lab already has; nothing here writes.

Holds: layout discovery of CLAM / TRIDENT / SAM-MIL feature stores (``discover``), the h5 / pt feature
readers (``readers``, ``pt_header``), the allow-list loader for pickles and ``.pt`` files (``safe_load``),
``process_list_autogen.csv`` and dataset CSVs (``process_list``), SAM-MIL Segments pickles
(``segments_pickle``), coordinate checks (``coords_check``), source fingerprints (``checksums``) and
``file://`` URLs (``urls``).

May import: ``clam2sam.errors``, ``clam2sam.ids``, ``clam2sam.masks`` and the standard / third-party
libraries. Never ``store``, ``sam``, ``convert``, ``inspect`` or ``cli``.
"""
