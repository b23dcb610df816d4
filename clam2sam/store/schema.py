"""The store's schema: every group, array, dtype and attribute name in one place.

Imported by the converter, ``inspect`` and the trainer, so that names never drift.

Layout (Zarr v3)::

    cohort.zarr/
      zarr.json                      root attrs: ROOT_ATTRS
      slides/<key>/                  one group per slide (key = ids.slide_key(slide_id))
        features        (N, D)       source dtype (float32 / float16 / float64), row-chunked, 1 shard
        coords          (N, 2)       int64, level-0 top-left (x, y)
        segment_ids     (N,)         int32, 0..S-1, NO_SEGMENT (-1) when the patch is in no segment
        patch_sam_area  (N,)         int64, SAM-pixel area of the patch's (smallest) segment, 1 when none
                                     (SAM-MIL's ``relative_area``)
        group_features  (S, D)       float32 (float64 when features are float64): mean of member rows
        segment_sizes   (S,)         int64, number of member patches
        segment_areas   (S,)         float64, segment area in level-0 pixels
        segment_areas_um2 (S,)       float64, area in um^2 (NaN when mpp unknown)
        segment_sam_area (S,)        int64, area in SAM-image pixels (SAM's ``area``)
        segment_source_index (S,)    int32, index of the mask in the source (pickle order / SAM output)
        member_indptr   (S+1,)       int64, CSR: members of segment k are
        member_indices  (M,)         int32  member_indices[member_indptr[k]:member_indptr[k+1]]
                                     (== segment_ids grouping for the partition rule; a patch may be in
                                     several segments under the ``reference`` rule)
        sam/                         optional cached SAM segmentation (see clam2sam.sam.cache)
      slide attrs: SLIDE_ATTRS; ``complete`` is written last.
"""
from __future__ import annotations

SCHEMA_VERSION = 1
NO_SEGMENT = -1
SLIDES_GROUP = "slides"

# Per-slide arrays: name -> (dtype or None for "source dtype", rank)
PATCH_ARRAYS = ("features", "coords", "segment_ids", "patch_sam_area")
SEGMENT_ARRAYS = ("group_features", "segment_sizes", "segment_areas", "segment_areas_um2",
                  "segment_sam_area", "segment_source_index")
CSR_ARRAYS = ("member_indptr", "member_indices")
ALL_ARRAYS = PATCH_ARRAYS + SEGMENT_ARRAYS + CSR_ARRAYS

DTYPES = {
    "coords": "int64",
    "segment_ids": "int32",
    "patch_sam_area": "int64",
    "segment_sizes": "int64",
    "segment_areas": "float64",
    "segment_areas_um2": "float64",
    "segment_sam_area": "int64",
    "segment_source_index": "int32",
    "member_indptr": "int64",
    "member_indices": "int32",
}
FEATURE_DTYPES = ("float16", "float32", "float64")

# Membership rules
MEMBERSHIP_PARTITION = "smallest-centre"   # default: smallest-area mask covering the patch centre
MEMBERSHIP_REFERENCE = "reference"         # SAM-MIL's scripts' rule (multi-membership)
MEMBERSHIP_RULES = (MEMBERSHIP_PARTITION, MEMBERSHIP_REFERENCE)

# Root attributes (all JSON)
ROOT_ATTRS = (
    "schema_version",    # int, SCHEMA_VERSION
    "tool",              # "clam2sam"
    "tool_version",      # clam2sam.__version__
    "feature_dim",       # int D
    "feature_dtype",     # "float32" | "float16" | "float64"
    "encoder",           # str or None
    "membership",        # rule name used for every slide
    "created",           # ISO time of creation
    "n_slides",          # complete slides at last finalize
)

# Slide attributes (all JSON)
SLIDE_ATTRS = (
    "slide_id",          # str, canonical id
    "n_patches",         # int N
    "n_segments",        # int S
    "label",             # str or None
    "case_id",           # str or None
    "patch_size_level0", # int or float: patch side in level-0 pixels
    "mpp",               # float or None (um per level-0 pixel)
    "layout",            # detected source layout (e.g. "clam-fp", "clam-legacy", "trident", "sammil")
    "membership",        # rule name
    "sources",           # list of {"role","path","size","sha256"}
    "sam",               # dict: SAM geometry/provenance ({} when no segmentation)
    "process_list",      # dict: row of process_list_autogen.csv (provenance) or None
    "source_byte_order", # "little" | "big": byte order of the source features (the store's are little-endian)
    "complete",          # True, written last
)
