"""Title source: English Wikipedia article names above a page-view threshold.

CLIP adds "the names of all Wikipedia articles above a certain search volume"; MetaCLIP
sums page views over sampled days, keeps titles with at least 70 views and drops titles
containing ':' (namespaces such as "File:" or "Talk:"). We read Wikimedia's hourly
page-view dumps (`pageviews-YYYYMMDD-HH0000.gz`, or the older `pagecounts-*`): lines of
`project title views bytes`. There is no offline default: without `--pageviews` this
source contributes nothing, and the build says so.
"""

from __future__ import annotations

import zlib
from collections import Counter
from urllib.parse import unquote

from .normalize import normalize_query
from .source import QueryListError, SourceResult, SourceUnavailable, sort_best_first
from .textfiles import open_binary

DEFAULT_MIN_VIEWS = 70
DEFAULT_PROJECTS = ("en",)


def decode_title(raw: str) -> str:
    """Article title as text: percent-escapes decoded when valid UTF-8, `_` as space."""
    if "%" in raw:
        try:
            raw = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            pass
    return raw.replace("_", " ")


def sum_views(paths: list[str], projects: tuple[str, ...], rejected: Counter) -> Counter:
    """Views per raw title of the given projects, summed over all files.

    Lines of other projects are skipped cheaply by their byte prefix; lines that do not
    have four fields with numeric views are counted in `rejected`.
    """
    prefixes = tuple(f"{p} ".encode() for p in projects)
    views: dict[bytes, int] = {}  # keyed by the raw bytes: decoding once per title is cheaper
    get = views.get
    for path in paths:
        try:
            with open_binary(path) as f:
                for raw in f:
                    if not raw.startswith(prefixes):
                        continue
                    fields = raw.split(b" ")
                    if len(fields) != 4 or not fields[2].isdigit():
                        rejected["malformed line"] += 1
                        continue
                    views[fields[1]] = get(fields[1], 0) + int(fields[2])
        except (OSError, EOFError, zlib.error) as e:
            raise QueryListError(f"cannot read page-view file {path}: {e}") from e
    decoded: Counter = Counter()
    for title, n in views.items():  # invalid bytes may decode alike: sum, don't overwrite
        decoded[title.decode("utf-8", errors="replace")] += n
    return decoded


def threshold(views: Counter, min_views: int, rejected: Counter) -> list[tuple[str, float]]:
    """(title, views) for titles without ':' at or above `min_views`, views summed
    again after decoding (so `A%20B` and `A_B` count together); best first."""
    merged: Counter = Counter()
    for raw, n in views.items():
        title = normalize_query(decode_title(raw))
        if ":" in title:
            rejected["title contains ':'"] += 1
            continue
        merged[title] += n
    return sort_best_first([(t, float(n)) for t, n in merged.items() if n >= min_views])


def load(paths: list[str], min_views: int, projects: tuple[str, ...]) -> SourceResult:
    """Titles of `projects` whose views, summed over `paths`, reach `min_views`."""
    if not paths:
        raise SourceUnavailable(
            "no page-view files given (there is no offline default); pass --pageviews FILE ... "
            "(hourly dumps from dumps.wikimedia.org/other/pageviews/)"
        )
    rejected: Counter = Counter()
    views = sum_views(paths, projects, rejected)
    return SourceResult(
        name="titles",
        entries=threshold(views, min_views, rejected),
        read=len(views),
        thresholds={"min_views": min_views, "projects": ",".join(projects), "files": len(paths)},
        paths=list(paths),
        version=f"{len(paths)} page-view file(s)",
        note="views summed over the given files; titles containing ':' dropped",
        rejected=dict(rejected),
    )
