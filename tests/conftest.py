"""Shared test fixtures: where the real data lives, and skipping cleanly without it."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
NAIVE_MATCHER = SHARED_DATA.parent / "bench" / "naive_matcher.py"


def shared_path(*parts: str) -> pathlib.Path:
    """A path under ../shared/data, or skip the test saying what is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not present: {p} (the shared/data folder is absent)")
    return p


@pytest.fixture
def shared_data():
    return shared_path


@pytest.fixture(scope="module")
def flickr_dir():
    """The real Flickr8k photos (test_fetch, test_resize, test_dnscache, test_write)."""
    return shared_path("flickr8k-1k", "images")
