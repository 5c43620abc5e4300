"""Shared by the fetch tests (test_fetch, test_resize, test_dnscache): the options they
start from, and small measuring helpers."""

from __future__ import annotations

import time

from pipeline.fetch import Fetcher, FetchOptions, FetchResult


def options(**overrides) -> FetchOptions:
    base = dict(
        allow_private_addresses=True,
        retries=1,
        backoff_base=0.01,
        connect_timeout=2.0,
        read_timeout=5.0,
        total_timeout=20.0,
        threads=8,
    )
    base.update(overrides)
    return FetchOptions(**base)


def first_photo(flickr_dir) -> str:
    return sorted(p.name for p in flickr_dir.glob("*.jpg"))[0]


def timed_fetch(fetcher: Fetcher, url: str, **kwargs) -> tuple[FetchResult, float]:
    start = time.monotonic()
    result = fetcher.fetch(url, **kwargs)
    return result, time.monotonic() - start
