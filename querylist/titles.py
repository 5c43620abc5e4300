"""Title source: English Wikipedia article names above a page-view threshold.

CLIP adds "the names of all Wikipedia articles above a certain search volume"; MetaCLIP
sums page views over sampled days, keeps titles with at least 70 views and drops titles
containing ':' (namespaces such as "File:" or "Talk:"). We read Wikimedia's hourly
page-view dumps (`pageviews-YYYYMMDD-HH0000.gz`, or the older `pagecounts-*`): lines of
`project title views bytes`. There is no offline default: without `--pageviews` this
source contributes nothing, and the build says so.

With `--titles FILE` (the `titles.tsv.gz` of `wit-querylist count`: the articles of a
dump, namespace 0, no redirects) the views are joined to those titles instead: a viewed
title that is not an article (a redirect, a missing page, another namespace) is dropped
and counted, and article titles that contain ':' ("Star Wars: Episode IV") are kept. The
join ignores the case of the first letter, as MediaWiki does.
"""

from __future__ import annotations

import io
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


def title_key(title: str) -> str:
    """The join key of a normalised title: MediaWiki ignores the case of its first letter."""
    first = title[:1].upper()
    return first + title[1:] if len(first) == 1 else title


def read_titles(path: str, rejected: Counter) -> dict[str, str]:
    """{title_key: title} of a `title<TAB>...` file (plain, gz or bz2)."""
    articles: dict[str, str] = {}
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="replace") as f:
            for line in f:
                title = normalize_query(line.split("\t", 1)[0])
                if not title:
                    rejected["malformed titles line"] += 1
                    continue
                articles.setdefault(title_key(title), title)
    except (OSError, EOFError, zlib.error) as e:
        raise QueryListError(f"cannot read {path}: {e}") from e
    return articles


def join(
    views: Counter, articles: dict[str, str], min_views: int, rejected: Counter
) -> list[tuple[str, float]]:
    """(article title, views) for viewed titles that are articles, views summed over every
    spelling that maps to one article; at or above `min_views`; best first."""
    merged: Counter = Counter()
    for raw, n in views.items():
        title = articles.get(title_key(normalize_query(decode_title(raw))))
        if title is None:
            rejected["not an article title (redirect, other namespace or missing)"] += 1
            continue
        merged[title] += n
    return sort_best_first([(t, float(n)) for t, n in merged.items() if n >= min_views])


def load(
    paths: list[str],
    min_views: int,
    projects: tuple[str, ...],
    titles_path: str | None = None,
) -> SourceResult:
    """Titles of `projects` whose views, summed over `paths`, reach `min_views`; only the
    articles listed in `titles_path` when it is given."""
    rejected: Counter = Counter()
    thresholds: dict[str, float | int | str] = {"min_views": min_views}
    articles = read_titles(titles_path, rejected) if titles_path else None
    if not paths:
        if articles is None:
            raise SourceUnavailable(
                "no page-view files given (there is no offline default); pass --pageviews "
                "FILE ... (hourly dumps from dumps.wikimedia.org/other/pageviews/)"
            )
        if min_views > 0:
            raise SourceUnavailable(
                f"--titles without --pageviews: the paper keeps titles by page views "
                f"(>= {min_views}); pass --pageviews FILE ..., or --min-views 0 to keep "
                f"all {len(articles):,} titles"
            )
        return SourceResult(
            name="titles",
            entries=sort_best_first([(t, 0.0) for t in articles.values()]),
            read=len(articles),
            thresholds={**thresholds, "titles_file": titles_path},
            paths=[titles_path],
            version="article titles, no page views",
            note="every article title of --titles (--min-views 0, no page-view files)",
            rejected=dict(rejected),
        )
    views = sum_views(paths, projects, rejected)
    thresholds.update(projects=",".join(projects), files=len(paths))
    if articles is None:
        entries = threshold(views, min_views, rejected)
        note = "views summed over the given files; titles containing ':' dropped"
    else:
        entries = join(views, articles, min_views, rejected)
        thresholds["titles_file"] = titles_path
        note = (
            f"views summed over the given files, joined to the {len(articles):,} article "
            "titles of --titles (redirects and other namespaces dropped)"
        )
    return SourceResult(
        name="titles",
        entries=entries,
        read=len(views),
        thresholds=thresholds,
        paths=list(paths) + ([titles_path] if titles_path else []),
        version=f"{len(paths)} page-view file(s)",
        note=note,
        rejected=dict(rejected),
    )
