"""`wit-querylist count`: words, pairs and titles from a MediaWiki dump, and `build` on them.

The real data is ../shared/data/wikipedia/enwiki-pages-articles-shortened.xml.bz2 (206
pages of English Wikipedia); tests that need it skip when it is absent. A small dump
written here holds every kind of markup, with counts checked by hand.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from xml.sax.saxutils import escape

import mwparserfromhell
import pytest
from conftest import shared_path

from querylist import cli, dump, wikitext, words
from querylist.count import CountConfig, count

DUMP = ("wikipedia", "enwiki-pages-articles-shortened.xml.bz2")
HEADER = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" '
    'xml:lang="en">\n  <siteinfo>\n    <sitename>Wikipedia</sitename>\n  </siteinfo>\n'
)


def page_xml(title: str, text: str, page_id: int, ns: int = 0, redirect: str = "") -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (
        f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n"
        f"    <id>{page_id}</id>\n{red}    <revision>\n      <id>{page_id + 1000}</id>\n"
        f'      <text xml:space="preserve">{escape(text)}</text>\n    </revision>\n  </page>\n'
    )


def write_dump(path, pages: list[str], compress=bz2.compress) -> str:
    path.write_bytes(compress((HEADER + "".join(pages) + "</mediawiki>\n").encode()))
    return str(path)


def run_count(dumps, out, **kw) -> dict:
    kw.setdefault("workers", 2)
    return count(CountConfig(dumps=[str(d) for d in dumps], out=str(out), progress=False, **kw))


def read_tsv(path) -> dict[str, int]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").rsplit("\t", 1) for line in f]
    return {k: int(v) for k, v in rows}


def outputs(out) -> dict[str, bytes]:
    return {k: (out / f"{k}.tsv.gz").read_bytes() for k in ("unigrams", "bigrams", "titles")}


# --- the matcher's rules ---------------------------------------------------------------


def test_words_use_the_matchers_normalisation_and_boundaries():
    import pipeline.match as match

    assert words.normalize_for_match is match.normalize_for_match
    # The splitter equals the matcher's on every code point: in a string of all of them,
    # one character classified differently would add or remove a run boundary.
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    assert words.split_runs(every) == match.split_runs(every)
    assert words.split_runs("a" + every) != words.split_runs("a" + every.replace("b", "-"))


def test_words_and_pairs_follow_the_matcher():
    runs, pairs = words.words_and_pairs("New  York's CAT-like cats,\tStraße x² ½ ")
    assert runs == ["new", "york", "s", "cat", "like", "cats", "strasse", "x²", "½"]
    # a pair needs whitespace alone between its words, as the query "w1 w2" does
    assert pairs == ["new york", "s cat", "like cats", "strasse x²", "x² ½"]
    assert words.words_and_pairs(f"one{words.BREAK}two three")[1] == ["two three"]


def occurrences(query: str, text: str) -> int:
    """Places where `query` matches `text` by DESIGN.md's rule (the naive matcher's
    `occurs`, counting instead of stopping at the first)."""
    n, start = 0, text.find(query)
    while start != -1:
        end = start + len(query)
        if (start == 0 or not text[start - 1].isalnum()) and (
            end == len(text) or not text[end].isalnum()
        ):
            n += 1
        start = text.find(query, start + 1)
    return n


def test_a_count_is_the_number_of_places_the_matcher_matches():
    text = "The cat's cat-cat sat; concatenate the CAT. a a a. Über über-uber"
    unigrams, bigrams = Counter(), Counter()
    words.count_into(text, unigrams, bigrams)
    normal = " ".join(text.casefold().split())
    for query, n in (unigrams + bigrams).items():
        assert occurrences(query, normal) == n, query
    assert unigrams["cat"] == 4 and "concatenate" in unigrams and bigrams["a a"] == 2


# --- wikitext to text ------------------------------------------------------------------


def test_quotes_are_read_as_mediawiki_does():
    q = wikitext.strip_quotes
    assert q("''A Modest Proposal'''s satire") == "A Modest Proposal's satire"
    assert q("''Iliad''s") == "Iliads"
    assert q("'''bold''' and ''italic''") == "bold and italic"
    assert q("l''''amour'''") == "l'amour"
    assert wikitext.visible_text("''θ''<sub>''i''</sub>") == "θi"


ZEBRA = """{{Infobox animal|name=Zebra|image=Zebra.jpg}}
'''Zebras''' are [[African]] [[equid]]s known for their ''black-and-white'' stripes.<ref>{{cite web|url=http://example.com/x|title=Refword}}</ref>
They live in [[Grassland|open grasslands]] and eat grass.<ref name="r1"/>
[[File:Zebra photo.jpg|thumb|200px|A photowordcaption [[inlink]]]]
== Habitat ==
Herds&nbsp;roam&amp;graze.<!-- hiddencomment -->
{| class="wikitable"
| tablecellword || 12
|}
* Plains zebra
* Mountain zebra
See [http://example.org Example site] and http://bareurl.example.net/path.
<math>x^2</math> __NOTOC__ {{{1}}}
<gallery>Galleryword.jpg</gallery>
{{DEFAULTSORT:Zebra}}
[[Category:Equidae]]
[[de:Zebras]]"""
ZEBRA_WORDS = dict.fromkeys(
    "zebras are african equids known for their black white stripes they live in open "
    "grasslands eat grass habitat herds roam graze see plains mountain example site".split(),
    1,
) | {"and": 3, "zebra": 2}
ZEBRA_PAIRS = {
    "zebras are", "are african", "african equids", "equids known", "known for",
    "for their", "their black", "white stripes", "they live", "live in", "in open",
    "open grasslands", "grasslands and", "and eat", "eat grass", "herds roam",
    "plains zebra", "mountain zebra", "see example", "example site", "site and",
}  # fmt: skip


def test_markup_is_dropped_and_prose_kept_by_hand():
    unigrams, bigrams = Counter(), Counter()
    words.count_into(wikitext.visible_text(ZEBRA), unigrams, bigrams)
    assert dict(unigrams) == ZEBRA_WORDS
    assert set(bigrams) == ZEBRA_PAIRS and set(bigrams.values()) == {1}


def test_count_on_a_small_dump(tmp_path):
    pages = [
        page_xml("Zebra", ZEBRA, 1),
        page_xml("Quagga", "The '''quagga''' was a [[zebra]].", 2),
        page_xml("AT&T", "AT&amp;T is a company.", 3),
        page_xml("Zebras (animal)", "#REDIRECT [[Zebra]]", 4, redirect="Zebra"),
        page_xml("Talk:Zebra", "talkword [[Zebra]]", 5, ns=1),
        page_xml("Zebroid", "#redirect [[Zebra]] oldredirectword", 6),  # no <redirect/>
    ]
    out, spill = tmp_path / "out", tmp_path / "spill"
    spill.mkdir()
    (spill / "keep.txt").write_text("not ours")
    dumps = [write_dump(tmp_path / "d.xml.bz2", pages)]
    s = run_count(dumps, out, workers=1, bigram_floor=1, tmp=str(spill))
    assert [p.name for p in spill.iterdir()] == ["keep.txt"]  # only our own folder went
    assert (s["pages"], s["articles"], s["redirects"], s["other_namespaces"]) == (6, 3, 2, 1)
    uni = read_tsv(out / "unigrams.tsv.gz")
    expected = Counter(ZEBRA_WORDS) + Counter("the quagga was a zebra at t is a company".split())
    assert uni == dict(expected)
    assert s["tokens"] == sum(expected.values())
    assert list(uni.values()) == sorted(uni.values(), reverse=True)  # by count, then word
    bi = read_tsv(out / "bigrams.tsv.gz")
    assert bi["a zebra"] == 1 and bi["is a"] == 1 and "t is" in bi and "at t" not in bi
    with gzip.open(out / "titles.tsv.gz", "rt", encoding="utf-8") as f:
        assert f.read() == "AT&T\t3\nQuagga\t2\nZebra\t1\n"


# --- the real excerpt ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real dump and its counts (2 workers, default settings)."""
    path = shared_path(*DUMP)
    out = tmp_path_factory.mktemp("count") / "out"
    return path, out, run_count([path], out)


def test_real_dump_totals(real):
    _, out, s = real
    assert (s["pages"], s["articles"], s["redirects"], s["other_namespaces"]) == (206, 106, 99, 1)
    assert s["inputs"][0]["mode"] == "single stream (bz2)"
    uni = read_tsv(out / "unigrams.tsv.gz")
    assert sum(uni.values()) == s["tokens"] and len(uni) == s["written"]["unigrams"]
    titles = (gzip.open(out / "titles.tsv.gz", "rt", encoding="utf-8").read()).splitlines()
    assert len(titles) == 106 and "Anarchism\t12" in titles
    assert not any(t.startswith(("AccessibleComputing\t", "Wikipedia:")) for t in titles)
    assert titles == sorted(titles)
    summary = json.loads((out / "count.json").read_text())
    assert summary["pages_per_s"] > 0 and summary["per_worker_cpu_second"]["pages"] > 0


def test_real_dump_known_words(real):
    """Words whose every occurrence was read by hand: in the wikitext they mostly occur
    inside markup (file links, citations, URLs); only these occurrences are prose."""
    _, out, _ = real
    uni = read_tsv(out / "unigrams.tsv.gz")
    # thumb: "Tom Thumb", "rule of thumb" (twice), "the pollex (or 'thumb')"; the
    # hundreds of [[File:...|thumb|...]] do not count.
    assert uni["thumb"] == 4
    assert uni["cite"] == 1  # "political figures who cite Rand"; not {{cite web}}
    assert uni["url"] == 1  # "URL encodings"; not |url= of citations
    assert uni["www"] == 2  # "www.StandardsPortal.org", "www.cartage.org.lb" (plain text)
    # and, as a pin (the independent reading below checks every word of 53 articles):
    bi = read_tsv(out / "bigrams.tsv.gz")
    assert (uni["the"], bi["of the"], bi["united states"]) == (33_219, 4_642, 314)


def test_real_dump_markup_never_becomes_a_word(real):
    _, out, _ = real
    uni, bi = read_tsv(out / "unigrams.tsv.gz"), read_tsv(out / "bigrams.tsv.gz")
    assert all(re.fullmatch(r"[^\W_]+", w) for w in uni)
    assert all(re.fullmatch(r"[^\W_]+ [^\W_]+", p) for p in bi)
    markup = "ref reflist nbsp defaultsort infobox px jpg png svg accessdate notoc wikitable"
    for word in [*markup.split(), "bgcolor", "colspan", "rowspan", "sfn", "harvnb"]:
        assert word not in uni, word


def reference_words(text: str) -> Counter:
    """An independent reading of one article: mwparserfromhell's own `strip_code` after
    removing, through its API, what docs/querylist.md says is not prose; words cut by
    the naive matcher's normalisation and `str.isalnum`."""
    code = mwparserfromhell.parse(text)
    for node in code.filter(recursive=True):
        kind = type(node).__name__
        title = str(getattr(node, "title", ""))
        hidden = (
            kind in ("Template", "Comment", "Argument")
            or (kind == "Tag" and str(node.tag).strip().lower() in wikitext.DROPPED_TAGS)
            or (kind == "ExternalLink" and not node.brackets)
            or (kind == "Wikilink" and re.match(r"\s*((?i:file|image|media|category)\s*:|[a-z]{2,3}(-[a-z]+)*:)", title))
        )  # fmt: skip
        if hidden:
            try:
                code.replace(node, " ")
            except ValueError:  # inside a node replaced already
                pass
    plain = re.sub(r"__[A-Z]+__", " ", code.strip_code(normalize=True, collapse=True))
    normal = " ".join(plain.casefold().split())
    return Counter("".join(run) for alnum, run in itertools.groupby(normal, str.isalnum) if alnum)


@pytest.mark.slow
def test_real_dump_equals_an_independent_reading(real):
    """Every word of every article under 40 kB of wikitext (53 of 106) is counted as the
    reference reads it. The one exception is the reference's fault: in "Ambiguity" it keeps
    a [[File:]] caption and a <ref> that sit inside a template argument."""
    path, _, _ = real
    disagree = {}
    for _, el in ET.iterparse(bz2.open(path)):
        if not el.tag.endswith("}page"):
            continue
        ns = {"m": el.tag[1:].split("}")[0]}
        text = el.findtext("m:revision/m:text", "", ns)
        if el.findtext("m:ns", "", ns) != "0" or el.find("m:redirect", ns) is not None:
            continue
        if len(text) > 40_000:
            continue
        ours = Counter(words.words_and_pairs(wikitext.visible_text(text))[0])
        ref = reference_words(text)
        if ours != ref:
            disagree[el.findtext("m:title", "", ns)] = (ref - ours, ours - ref)
        el.clear()
    assert set(disagree) == {"Ambiguity"}
    extra_in_reference, extra_in_ours = disagree["Ambiguity"]
    assert not extra_in_ours and {"svg", "thumb", "foucault"} <= set(extra_in_reference)


# --- reruns, parallel reading, spills --------------------------------------------------


def multistream(xml: bytes, cuts: list[int]) -> bytes:
    """The dump recompressed as one bzip2 stream per piece between `cuts`."""
    bounds = [0, *cuts, len(xml)]
    return b"".join(
        bz2.compress(xml[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a
    )


@pytest.mark.slow
def test_rerun_and_every_reading_give_the_same_bytes(real, tmp_path):
    path, out, first = real
    base = outputs(out)
    xml = bz2.decompress(path.read_bytes())
    starts = [m.start() for m in re.finditer(rb"  <page>", xml)]
    # as Wikimedia's multistream dumps: streams end on a page (here every 20 pages)
    aligned = tmp_path / "aligned.xml.bz2"
    aligned.write_bytes(multistream(xml, [*starts[::20], xml.rfind(b"</mediawiki>")]))
    # as pbzip2 writes: streams end anywhere, pages straddle them (and their tags too)
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(multistream(xml, list(range(100_003, len(xml), 100_003))))
    plain = tmp_path / "plain.xml"
    plain.write_bytes(xml)
    runs = {
        "rerun, 1 worker, spilling every few pages": ([path], {"workers": 1, "spill_keys": 20_000}),
        "multistream, page-aligned": ([aligned], {"chunk_mb": 0.1}),
        "multistream, pages straddle streams": ([cut], {"chunk_mb": 0.1, "partitions": 7}),
        "plain XML": ([plain], {"workers": 3, "chunk_mb": 0.5}),
    }
    for name, (dumps, kw) in runs.items():
        o = tmp_path / name.replace(" ", "_").replace(",", "")
        s = run_count(dumps, o, **kw)
        assert outputs(o) == base, name
        assert (s["pages"], s["tokens"]) == (first["pages"], first["tokens"]), name
        if "multistream" in name:
            assert s["inputs"][0]["mode"] == "multistream"
        if "spilling" in name:
            assert s["settings"]["spills"] >= 3
    assert gzip.decompress(base["titles"]).count(b"\n") == 106
    assert base["unigrams"][4:8] == b"\0\0\0\0"  # gzip mtime 0: same bytes on every run


# --- damaged input ---------------------------------------------------------------------


def damaged_inputs(path, tmp_path) -> dict:
    data = path.read_bytes()
    xml = bz2.decompress(data)
    flipped = bytearray(data)
    flipped[400_000] ^= 0xFF
    cases = {
        "truncated.xml.bz2": data[:450_000],
        "flipped.xml.bz2": bytes(flipped),
        "cut-inside-a-page.xml.bz2": bz2.compress(xml[:1_500_000]),
        "cut-between-pages.xml.bz2": bz2.compress(xml[: xml.find(b"  <page>", 1_500_000)]),
        "multistream-truncated.xml.bz2": multistream(
            xml, [m.start() for m in re.finditer(rb"  <page>", xml)][::10]
        )[:600_000],
        "not-a-dump.xml.bz2": b"PK\x03\x04 a zip file",
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
    return cases


def test_damaged_dumps_give_one_line_naming_file_and_page(tmp_path, capsys):
    path = shared_path(*DUMP)
    reached = {
        "truncated.xml.bz2": r"ends inside a stream .* after page #\d+ '.+' \(id \d+\)",
        "flipped.xml.bz2": r"damaged bzip2 data .* after page #\d+ '.+' \(id \d+\)",
        "cut-inside-a-page.xml.bz2": r"ends inside page #\d+ '.+' \(id \d+\), after page #\d+",
        "cut-between-pages.xml.bz2": r"does not end with </mediawiki>, after page #\d+ '.+'",
        "multistream-truncated.xml.bz2": r"ends inside a stream .* last whole page .* '.+'",
        "not-a-dump.xml.bz2": r"not a MediaWiki XML dump",
    }
    for name in damaged_inputs(path, tmp_path):
        out = tmp_path / f"out-{name}"
        argv = ["count", "--wikipedia", str(tmp_path / name), "--out", str(out)]
        assert cli.main([*argv, "--workers", "2", "--no-progress"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"wit-querylist: error: {tmp_path / name}: "), err
        assert re.search(reached[name], err), err
        assert not (out / "unigrams.tsv.gz").exists() and not list(out.glob(".count-tmp*"))


def test_count_cli_errors(tmp_path, capsys):
    missing = tmp_path / "missing.xml.bz2"
    assert cli.main(["count", "--wikipedia", str(missing), "--out", str(tmp_path)]) == 2
    assert f"no such file: {missing}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["count", "--out", str(tmp_path)])  # --wikipedia is required


# --- the outputs feed build ------------------------------------------------------------


def test_split_pages_edge_cases():
    data = (HEADER + page_xml("A", "x", 1) + page_xml("B", "y", 2) + "</mediawiki>\n").encode()
    s = dump.split_pages(data)
    assert len(s.pages) == 2 and dump.is_header(s.lead) and dump.is_footer(s.tail)
    cut = dump.split_pages(data[: data.find(b"<page>", 200) + 3])
    assert len(cut.pages) == 1 and cut.tail.strip() == b"<pa"
    assert dump.parse_page(s.pages[1]).title == "B"
    with pytest.raises(ValueError):
        dump.split_pages(b"<page><title>A</title><page></page>")


def pageviews(tmp_path) -> str:
    lines = [
        "en Alabama 50 0",
        "en alabama 25 0",  # the first letter's case does not matter
        "en A_Modest_Proposal 70 0",
        "en Anarchism 69 0",  # one view short
        "en AccessibleComputing 500 0",  # a redirect
        "en Talk:Alabama 900 0",  # another namespace
        "en Caf%C3%A9_de_Flore 900 0",  # not in this dump
        "en.m Anarchism 1000 0",  # the mobile site is another project
    ]
    path = tmp_path / "pageviews-20240101-000000.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return str(path)


def test_outputs_feed_build(real, tmp_path, capsys):
    _, counts, _ = real
    out = tmp_path / "ql"
    argv = ["build", "--counts", str(counts), "--out", str(out)]
    argv += ["--min-count", "100", "--min-bigram-count", "20", "--pageviews", pageviews(tmp_path)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "querylist.json").read_text())
    sources = report["sources"]
    assert sources["unigrams"]["paths"] == [str(counts / "unigrams.tsv.gz")]
    assert sources["bigrams"]["thresholds"]["corpus_tokens"] == real[2]["tokens"]
    queries = (out / "querylist.txt").read_text().splitlines()
    assert "the" in queries and "united states" in queries
    # Alabama (50 + 25 views) and A Modest Proposal (70) pass; "alabama" is a unigram already
    assert sources["titles"]["passed_threshold"] == 2 and sources["titles"]["duplicates"] == 1
    assert "A Modest Proposal" in queries and "Anarchism" not in queries
    rejected = sources["titles"]["rejected"]
    assert rejected["not an article title (redirect, other namespace or missing)"] == 3
    unigrams_read = sources["unigrams"]["read"]
    assert unigrams_read == real[2]["written"]["unigrams"]


def test_build_titles_without_pageviews(real, tmp_path, capsys):
    _, counts, _ = real
    base = ["build", "--counts", str(counts)]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "querylist.json").read_text())
    assert report["sources"]["titles"]["status"] == "unavailable"
    assert "--titles without --pageviews" in report["sources"]["titles"]["note"]
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--min-views", "0"]) == 0
    report = json.loads((tmp_path / "b" / "querylist.json").read_text())
    titles = report["sources"]["titles"]
    assert titles["passed_threshold"] == 106
    capsys.readouterr()


@pytest.mark.slow
def test_one_command_from_dump_to_list_and_reuse(tmp_path, capsys):
    path = shared_path(*DUMP)
    out = tmp_path / "ql"
    argv = ["build", "--wikipedia", str(path), "--out", str(out)]
    argv += ["--min-count", "50", "--min-bigram-count", "20", "--pageviews", pageviews(tmp_path)]
    argv += ["--workers", "2", "--no-progress"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "read 206 pages: 106 articles" in err
    assert (out / "counts" / "count.json").is_file() and (out / "querylist.parquet").is_file()
    counts = json.loads((out / "querylist.json").read_text())["counts"]
    assert counts["unigrams"] > 1000 and counts["bigrams"] > 0 and counts["titles"] == 1
    assert cli.main(argv) == 0  # the second time the counts are reused
    assert "reusing the counts" in capsys.readouterr().err


def test_an_article_the_parser_fails_on_is_skipped_and_reported(tmp_path, monkeypatch):
    import querylist.count as count_module

    real_visible_text = count_module.visible_text

    def fragile(text):
        if "POISON" in text:
            raise RecursionError("maximum recursion depth exceeded")
        return real_visible_text(text)

    monkeypatch.setattr(count_module, "visible_text", fragile)  # workers fork: they see it
    pages = [page_xml("Good", "A good page.", 1), page_xml("Bad", "POISON page", 2)]
    out = tmp_path / "out"
    s = run_count([write_dump(tmp_path / "d.xml.bz2", pages)], out, workers=1)
    assert (s["articles"], s["skipped_articles"]) == (1, 1)
    assert s["skipped_examples"] == [
        "'Bad' (id 2): RecursionError('maximum recursion depth exceeded')"
    ]
    assert read_tsv(out / "unigrams.tsv.gz") == {"a": 1, "good": 1, "page": 1}
    assert read_tsv(out / "titles.tsv.gz") == {"Bad": 2, "Good": 1}  # still an article
    assert "skipped 1 article(s)" in count_module.summary_lines(s)[-1]
