"""Arrow schemas and the closed status set shared by the writer, wit-stats and the tests.

`docs/shard-format.md` is the prose twin of this module; change both together.
"""

from __future__ import annotations

import pyarrow as pa

KEPT = "kept"
DUPLICATE = "duplicate"
CAPTION_REJECTED = "caption_rejected"
NO_MATCH = "no_match"
LANGUAGE_REJECTED = "language_rejected"
NOT_SELECTED = "not_selected"
FETCH_FAILED = "fetch_failed"
OPTED_OUT = "opted_out"
BLOCKED_ADDRESS = "blocked_address"
IMAGE_REJECTED = "image_rejected"

#: The closed set of `status` values; every input candidate ends in exactly one.
STATUSES: tuple[str, ...] = (
    KEPT,
    DUPLICATE,
    CAPTION_REJECTED,
    NO_MATCH,
    LANGUAGE_REJECTED,
    NOT_SELECTED,
    FETCH_FAILED,
    OPTED_OUT,
    BLOCKED_ADDRESS,
    IMAGE_REJECTED,
)

STATUS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("source", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("matched_queries", pa.list_(pa.string())),
        pa.field("selected_by", pa.list_(pa.string())),
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),
    ]
)

QUERY_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("query", pa.string(), nullable=False),
        pa.field("matched", pa.int64(), nullable=False),
        pa.field("selected", pa.int64(), nullable=False),
        pa.field("kept", pa.int64(), nullable=False),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("matched_queries", pa.list_(pa.string())),
        pa.field("selected_by", pa.list_(pa.string())),
    ]
)

FETCHED = "fetched"
ROBOTS_DISALLOWED = "robots_disallowed"
NOT_HTML = "not_html"
INVALID_URL = "invalid_url"

#: The closed set of page statuses in `pages/part-*.parquet` (`--input-format pages`).
PAGE_STATUSES: tuple[str, ...] = (
    FETCHED,
    ROBOTS_DISALLOWED,
    OPTED_OUT,
    BLOCKED_ADDRESS,
    FETCH_FAILED,
    NOT_HTML,
    INVALID_URL,
)

PAGE_SCHEMA = pa.schema(
    [
        pa.field("page_url", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("images_found", pa.int64()),
    ]
)


def key_for_uid(uid: str) -> str:
    """Tar keys come from the uid so that a rerun writes the same keys.

    16 hex digits (64 bits) keep keys short; webdataset splits keys at the first dot, so
    a key must contain none.
    """
    return uid[:16]


def shard_name(index: int) -> str:
    """`00000`, `00001`, ... as open_clip's brace patterns expect."""
    return f"{index:05d}"
