"""The chunked, compressed Zarr store: its schema, writer, reader and on-disk helpers.

Holds: the schema (names, attributes, versions: ``schema``), per-slide arrays and their validation
(``slide_arrays``), group features (``groups``), the writer (``writer``: ``StoreWriter``,
``write_slide_group``), the reader (``reader``: ``open_store``, ``StoreReader``), whole-shard I/O
(``fast_read``, ``fast_write``), metadata consolidation (``consolidate``), the root attributes (``root``),
the writer's lock (``lock``) and the safe ``--overwrite`` (``overwrite``).

May import: ``clam2sam.errors``, ``clam2sam.ids``, ``clam2sam.jsonable``, ``clam2sam.threads``,
``clam2sam._testhooks``. Never ``sources``, ``sam``, ``convert``, ``inspect`` or ``cli``.
This ``__init__`` imports nothing, so that ``import clam2sam.store.schema`` stays light.
"""
