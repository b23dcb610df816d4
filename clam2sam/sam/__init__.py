"""The SAM pass: segment a slide's thumbnail with Segment Anything and keep the masks.

Holds: checkpoint loading (``model``), the small torchvision stand-in ``segment_anything`` needs
(``tv_standin``), slide reading for SAM (``slide_io``), the pass itself (``segment_pass``), its per-slide
mask cache (``cache``), the pass's options and the segment provider built from them (``provider``, no
click) and the export of cached masks as SAM-MIL Segments pickles (``export``).

May import: ``clam2sam.errors``, ``clam2sam.ids``, ``clam2sam.masks``, ``clam2sam._lazy`` and
``clam2sam.sources`` (the allow-list loader). Never ``store``, ``convert``, ``inspect`` or ``cli``.
"""
