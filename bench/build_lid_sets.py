"""Build labelled language-ID sets of short, real alt-text from translated Debian docs.

Sources (Debian bookworm packages; install them first, as root):

    apt-get update
    apt-get install -y --no-install-recommends \\
        $(apt-cache search --names-only '^gimp-help-' | cut -d' ' -f1) \\
        $(apt-cache search --names-only '^libreoffice-help-' | cut -d' ' -f1) \\
        $(apt-cache search --names-only '^debian-reference-' | cut -d' ' -f1)

- ``gimp-help-*``: the GIMP manual (GFDL), 27 languages: image ``alt`` text, figure and
  table titles, section headings;
- ``libreoffice-help-*``: the LibreOffice help (MPL-2.0), 34 languages: icon and
  illustration ``alt`` text, headings, page titles;
- ``debian-reference-*``: the Debian Reference (GPL-2+), 11 languages: headings, figure
  and table titles.

From every HTML page the script takes ``img/@alt``, ``h1``-``h6``, ``title``,
``figcaption``/``caption`` and DocBook titles (``p.title``), removes numbering such as
"Figure 16.20." or "1.2.3.", and drops strings that are code or file names. A string in
a translation is dropped when it also occurs in the English version of the same docs
(any text node, compared case- and punctuation-insensitively: an untranslated string is
English, not the translation's language) and when it is English inside local quote marks
(„Gaussian Blur“, «Tile»). The English set is the English originals (``en``, ``en_GB``,
``en-US``, ``en-GB``) plus the real captions of ``../shared/data`` (CC3M validation,
Flickr8k). The LAION-style sample of ``../shared/data`` has no language labels; it is
written as ``web.tsv`` for timing on a realistic mix only.

Each (language, text) pair is kept once. A pair goes to ``tune.tsv`` or ``test.tsv`` by
the parity of a SHA-1 of its text, so the split repeats and a text never lands in both.
Rows are ``source<TAB>lang<TAB>text``; ``counts.json`` records the counts.

    .venv/bin/python bench/build_lid_sets.py [--out ~/.cache/wit-builder/lid-sets]
        [--sample tests/data/lid_short_alt.tsv]
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import json
import math
import os
import pathlib
import random
import re
import subprocess
import unicodedata

from selectolax.lexbor import LexborHTMLParser as HTMLParser

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_OUT = pathlib.Path(
    os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"), "wit-builder", "lid-sets"
)

GIMP = pathlib.Path("/usr/share/gimp/2.0/help")
LIBREOFFICE = pathlib.Path("/usr/share/libreoffice/help")
DEBREF = pathlib.Path("/usr/share/debian-reference")

# Directory / suffix names -> ISO 639-1 (regional variants folded into the language).
LANG = {
    "en_GB": "en", "en-GB": "en", "en-US": "en", "pt_BR": "pt", "pt-BR": "pt", "pt-br": "pt",
    "zh_CN": "zh", "zh-CN": "zh", "zh-TW": "zh", "zh-cn": "zh", "zh-tw": "zh",
    "ca-valencia": "ca",
}  # fmt: skip

NUMBERING = re.compile(
    r"^(?:[^\s\d]{1,20}\s?)?(?:(?:\d+|[A-Z])(?:\.\d+)*\.|\d+(?:\.\d+)+)(?:\s+|$)(?:[^\W\d]{1,12} - )?"
)
CAMEL = re.compile(r"^[A-Z]?[a-z]+[A-Z]\w*$")
WORD = re.compile(r"[^\W\d_]+")
CODE = re.compile(
    r"://|[=_{}<>\\$#@|~^]|\w\(|\(\)|\.(?:png|svg|jpe?g|gif|xcf|html?|xml|txt|py|scm|conf)\b",
    re.IGNORECASE,
)
QUOTED = re.compile(
    r"[\"“”„‟‚‘’'«»‹›「」『』]\s*([^\"“”„‟‚‘’«»‹›「」『』]+?)\s*[\"“”„‟‚‘’'«»‹›「」『』]"
)
MAX_WORDS = 20
MIN_TRANSLATED_WORDS = 50_000  # below this a translation's own word counts are too few


def lang_of(name: str) -> str:
    return LANG.get(name, name)


def package(family: str, name: str) -> str:
    """The Debian package that ships a language directory (en_GB -> gimp-help-en-gb)."""
    return f"{family}-{name.removesuffix('-valencia').replace('_', '-').lower()}"


def key(text: str) -> str:
    """Case- and punctuation-insensitive form for 'occurs in the English version'."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return " ".join(kept.split())


def clean(text: str) -> str | None:
    text = " ".join(text.replace("\u00a0", " ").split())
    text = NUMBERING.sub("", text).strip()
    if CODE.search(text):
        return None
    letters = sum(ch.isalpha() for ch in text)
    words = text.split()
    if letters < 2 or len(words) > MAX_WORDS:
        return None
    if not any(sum(ch.isalpha() for ch in w) >= 2 for w in words):
        return None
    if len(words) == 1 and (
        text.isupper() or any(ch.isdigit() for ch in text) or CAMEL.match(text)
    ):
        return None  # function names (ACOS, CreateChart), keys (F5), versions: no language
    return text


def pages() -> list[tuple[str, str, pathlib.Path]]:
    """(package, language, html path) for every installed page."""
    out = []
    if GIMP.is_dir():
        for d in sorted(GIMP.iterdir()):
            if d.is_dir():
                pkg = package("gimp-help", d.name)
                out += [(pkg, lang_of(d.name), p) for p in sorted(d.glob("*.html"))]
    if LIBREOFFICE.is_dir():
        for d in sorted(LIBREOFFICE.iterdir()):
            if (d / "text").is_dir():
                pkg = package("libreoffice-help", d.name)
                out += [(pkg, lang_of(d.name), p) for p in sorted((d / "text").rglob("*.html"))]
    if DEBREF.is_dir():
        for p in sorted(DEBREF.glob("*.*.html")):
            suffix = p.name.split(".")[-2]
            out.append((package("debian-reference", suffix), lang_of(suffix), p))
    return out


def extract(path: pathlib.Path) -> tuple[list[str], list[str]]:
    """(alt-text-like strings, every text node) of one page."""
    tree = HTMLParser(path.read_bytes().decode("utf-8", "replace"))
    short = [img.attributes.get("alt") or "" for img in tree.css("img")]
    for sel in ("h1", "h2", "h3", "h4", "h5", "h6", "title", "figcaption", "caption", "p.title"):
        short += [node.text(deep=True, separator=" ") for node in tree.css(sel)]
    body = tree.body
    nodes = [n.text(deep=False) for n in body.traverse(include_text=False)] if body else []
    return short, nodes + short


def english_quoted(text: str, english: set[str]) -> bool:
    """English inside local quote marks, and nothing else that is not English."""
    spans = QUOTED.findall(text)
    if not spans:
        return False
    rest = QUOTED.sub(" ", text)
    return all(key(s) in english for s in spans) and (not key(rest) or key(rest) in english)


def split_of(text: str) -> str:
    return "tune" if hashlib.sha1(text.encode()).digest()[0] % 2 == 0 else "test"


def shared_captions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cc3m = DATA / "captions" / "cc3m-validation.tsv"
    if cc3m.exists():
        out["cc3m"] = [line.split("\t")[0] for line in open(cc3m, encoding="utf-8")]
    flickr = DATA / "flickr8k-1k" / "captions.csv"
    if flickr.exists():
        with open(flickr, encoding="utf-8", newline="") as f:
            out["flickr8k"] = [row["caption"] for row in csv.DictReader(f)]
    return out


def web_captions() -> list[str]:
    path = DATA / "captions" / "img2dataset-test_10000.parquet"
    if not path.exists():
        return []
    import pyarrow.parquet as pq

    return [t for t in pq.read_table(path)["TEXT"].to_pylist() if t and t.strip()]


def package_versions(packages: set[str]) -> dict[str, str]:
    out = {}
    for pkg in sorted(packages):
        try:
            out[pkg] = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True
            ).stdout
        except OSError:
            out[pkg] = ""
    return out


NON_LATIN = {"dz", "el", "fa", "hi", "ja", "km", "ko", "ru", "uk", "zh"}


def latin_only(text: str) -> bool:
    return all(unicodedata.name(ch, "").startswith("LATIN") for ch in text if ch.isalpha())


def build() -> tuple[list[tuple[str, str, str]], dict]:
    found = sorted(pages(), key=lambda p: p[1] != "en")  # English first: the filters need it
    if not found:
        raise SystemExit(
            "no translated docs installed: see the apt-get line in this file's docstring"
        )
    english: set[str] = set()
    # Word counts: English over all English text; a translation's over its text nodes that
    # where at least a third of the words never occur in the English docs (translated text, so that
    # untranslated English in a little-translated manual does not count as its language).
    words: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    raw: list[tuple[str, str, str]] = []  # (package, lang, text)
    for pkg, lang, path in found:
        short, nodes = extract(path)
        for t in nodes:
            k = key(t or "")
            if not k:
                continue
            ws = WORD.findall(t.casefold())
            if lang == "en":
                english.add(k)
                words[lang].update(ws)
            elif 3 * sum(w not in words["en"] for w in ws) >= len(ws):
                words[lang].update(ws)
        raw += [(pkg, lang, t) for t in short]
    totals = {lang: sum(c.values()) + len(c) for lang, c in words.items()}

    def untranslated(text: str, lang: str) -> bool:
        """More likely under the English docs' word frequencies than under the translation's.

        A unigram model of each side with add-one smoothing: the string is untranslated (or
        language-neutral) when its words are jointly more probable in the English text.
        """
        ws = WORD.findall(text.casefold())
        en, own = words["en"], words[lang]
        ll_en = sum(math.log((en[w] + 1) / totals["en"]) for w in ws)
        ll_own = sum(math.log((own[w] + 1) / totals[lang]) for w in ws)
        return bool(ws) and ll_en >= ll_own

    drops: collections.Counter = collections.Counter()
    dropped = collections.defaultdict(set)
    seen: dict[tuple[str, str], str] = {}
    for pkg, lang, text in raw:
        text = clean(text or "")
        if text is None:
            drops["code, number, too short or too long"] += 1
            continue
        if lang != "en":
            reason = None
            if totals.get(lang, 0) < MIN_TRANSLATED_WORDS:
                reason = "translation too small to tell untranslated strings"
            elif key(text) in english:
                reason = "occurs in the English version"
            elif english_quoted(text, english):
                reason = "English in quote marks"
            elif lang in NON_LATIN and latin_only(text):
                reason = "Latin letters only in a non-Latin-script translation"
            elif untranslated(text, lang):
                reason = "words more likely in the English docs"
            if reason:
                drops[reason] += 1
                if reason != "occurs in the English version":
                    dropped[reason].add(f"{lang}: {text}")
                continue
        seen.setdefault((lang, text), pkg)
    rows = [(_source(src), lang, text) for (lang, text), src in seen.items()]
    for name, caps in shared_captions().items():
        for text in dict.fromkeys(" ".join(c.split()) for c in caps if c.strip()):
            rows.append((name, "en", text))
    rng = random.Random(0)
    examples = {k: rng.sample(sorted(v), min(12, len(v))) for k, v in sorted(dropped.items())}
    meta = {
        "drops": dict(drops),
        "drop_examples": examples,
        "translated_words": {lang: sum(c.values()) for lang, c in sorted(words.items())},
        "packages": package_versions({p for p, _, _ in found}),
    }
    return rows, meta


def _source(pkg: str) -> str:
    for name in ("gimp-help", "libreoffice-help", "debian-reference"):
        if pkg.startswith(name):
            return name
    return pkg


def cap_per_language(rows, per_language: int):
    """At most ``per_language`` non-English docs strings per language and split, by hash order."""
    order = sorted(rows, key=lambda r: hashlib.sha1(f"{r[1]}\t{r[2]}".encode()).digest())
    taken: collections.Counter = collections.Counter()
    out = []
    for src, lang, text in order:
        if lang != "en":
            k = (lang, split_of(text))
            if taken[k] >= per_language:
                continue
            taken[k] += 1
        out.append((src, lang, text))
    return out


def write(rows, meta, out: pathlib.Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    counts: dict = {"tune": collections.Counter(), "test": collections.Counter()}
    files = {s: open(out / f"{s}.tsv", "w", encoding="utf-8") for s in ("tune", "test")}
    for src, lang, text in rows:
        s = split_of(text)
        files[s].write(f"{src}\t{lang}\t{text}\n")
        short = len(text.split()) <= 3
        counts[s][f"{src}/{lang}"] += 1
        counts[s]["en" if lang == "en" else "non-en"] += 1
        if src not in ("cc3m", "flickr8k"):
            counts[s][("en" if lang == "en" else "non-en") + " docs"] += 1
            counts[s][("en" if lang == "en" else "non-en") + " docs <=3 words"] += short
    for f in files.values():
        f.close()
    web = web_captions()
    with open(out / "web.tsv", "w", encoding="utf-8") as f:
        for text in web:
            f.write(f"laion\t?\t{' '.join(text.split())}\n")
    summary = {
        "splits": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "languages": sorted({lang for _, lang, _ in rows}),
        "web": len(web),
        **meta,
    }
    (out / "counts.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def write_sample(
    sets: pathlib.Path, out: pathlib.Path, per_lang: int = 8, english: int = 160
) -> None:
    """A small checked-in sample from the held-out half: docs strings only."""
    rows = [r.rstrip("\n").split("\t") for r in open(sets / "test.tsv", encoding="utf-8")]
    rng = random.Random(19)
    docs = [r for r in rows if r[0] not in ("cc3m", "flickr8k")]
    by_lang = collections.defaultdict(list)
    for r in docs:
        by_lang[r[1]].append(r)
    pick = rng.sample(by_lang.pop("en"), english)
    for lang in sorted(by_lang):
        pool = [r for r in by_lang[lang] if len(r[2].split()) <= 6]
        pick += rng.sample(pool, min(per_lang, len(pool)))
    packages = json.loads((sets / "counts.json").read_text())["packages"]

    def version(family: str) -> str:
        return "/".join(sorted({v for p, v in packages.items() if p.startswith(family)})) or "?"

    with open(out, "w", encoding="utf-8") as f:
        f.write(
            "# Real strings (image alt text, figure/table titles, headings) from the translated\n"
            "# documentation packaged in Debian 12, drawn by bench/build_lid_sets.py from the\n"
            "# held-out half of its sets: source<TAB>language<TAB>text. Packages:\n"
            f"# gimp-help-* {version('gimp-help')} (the GIMP manual, GFDL-1.2+),\n"
            f"# libreoffice-help-* {version('libreoffice-help')} (LibreOffice help, MPL-2.0),\n"
            f"# debian-reference-* {version('debian-reference')} (Debian Reference, GPL-2+).\n"
        )
        for src, lang, text in sorted(pick):
            f.write(f"{src}\t{lang}\t{text}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--sample", type=pathlib.Path, help="also write a small test sample here")
    ap.add_argument("--per-language", type=int, default=600,
                    help="non-English strings kept per language in each half (so that the "
                         "languages with the most docs do not dominate the rejection rate)")  # fmt: skip
    args = ap.parse_args()
    rows, meta = build()
    available = collections.Counter(lang for _, lang, _ in rows if lang != "en")
    rows = cap_per_language(rows, args.per_language)
    meta["non_english_available"] = dict(sorted(available.items()))
    meta["per_language_cap"] = args.per_language
    summary = write(rows, meta, args.out)
    for split, c in summary["splits"].items():
        print(split, {k: v for k, v in c.items() if "/" not in k})
    print(f"languages: {len(summary['languages'])}; web (unlabelled): {summary['web']:,}")
    print(f"dropped: {summary['drops']}")
    print(f"written to {args.out}")
    if args.sample:
        args.sample.parent.mkdir(parents=True, exist_ok=True)
        write_sample(args.out, args.sample)
        print(f"sample: {args.sample}")


if __name__ == "__main__":
    main()
