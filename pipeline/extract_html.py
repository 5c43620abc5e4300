"""Image candidates and same-site links from one HTML page, the way a browser would see them.

`pipeline.read_warc.images_in_html` reads only `<img src alt>`. Live pages serve their
real images through `srcset` and `<picture><source>`, and lazy loaders park the URL in
`data-src`; this module picks, for each `<img>`, the largest image the page offers and
resolves it against `<base href>`. The caption is the alt text, as in CLIP and MetaCLIP;
the image's `title` attribute or its `<figure>`'s `<figcaption>` are opt-in alternatives
(`--page-text`), used only where present and falling back to alt.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser as HTMLParser

TEXT_MODES = ("alt", "title", "figcaption")
_SPACE = re.compile(r"\s+")
_WS = " \t\n\r\f"
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
#: How far up from an <img> a <figure> is looked for (figure > a > picture > img is common).
_FIGURE_DEPTH = 6


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(body: bytes, charset: str | None = None) -> str:
    """Page bytes as text: the HTTP charset, else a `<meta>` charset in the first 4 KiB,
    else UTF-8, else windows-1252 (what browsers assume for legacy pages)."""
    meta = _META_CHARSET.search(body[:4096])
    for name in (charset, meta.group(1).decode("ascii") if meta else None):
        codec = _codec(name)
        if codec:
            return body.decode(codec, errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("cp1252", errors="replace")


@dataclass(frozen=True)
class SrcsetCandidate:
    """One `url descriptor` entry of a srcset; `unit` is "w" (pixel width) or "x" (density)."""

    url: str
    size: float
    unit: str


def _descriptor_tokens(text: str, pos: int) -> tuple[list[str], int]:
    """Descriptor tokens up to the comma that ends a candidate (commas in parentheses stay)."""
    tokens, current, depth = [], "", 0
    while pos < len(text):
        ch = text[pos]
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "," and not depth:
            pos += 1
            break
        if ch in _WS and not depth:
            if current:
                tokens.append(current)
            current = ""
        else:
            current += ch
        pos += 1
    if current:
        tokens.append(current)
    return tokens, pos


def _descriptor(tokens: list[str]) -> tuple[float, str] | None:
    """(size, unit) of a candidate; None when the descriptors are invalid (HTML drops it)."""
    size, unit = 1.0, "x"
    seen = 0
    for token in tokens:
        kind, number = token[-1:].lower(), token[:-1]
        try:
            value = float(number)
        except ValueError:
            return None
        if kind == "w" and number.isdigit() and value > 0:
            size, unit = value, "w"
        elif kind == "x" and value > 0:
            size, unit = value, "x"
        elif kind == "h" and number.isdigit():
            continue  # a height hint, meaningful only next to a width
        else:
            return None
        seen += 1
    return None if seen > 1 else (size, unit)


def parse_srcset(value: str | None) -> list[SrcsetCandidate]:
    """The candidates of a srcset attribute, following the WHATWG parsing steps.

    A URL may contain commas (`.../w_100,h_80/cat.jpg 100w`): a candidate's URL runs to
    the next whitespace, and only a comma after its descriptors ends the candidate.
    """
    text, pos, out = value or "", 0, []
    while pos < len(text):
        while pos < len(text) and (text[pos] in _WS or text[pos] == ","):
            pos += 1
        if pos >= len(text):
            break
        start = pos
        while pos < len(text) and text[pos] not in _WS:
            pos += 1
        url = text[start:pos]
        tokens: list[str] = []
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            tokens, pos = _descriptor_tokens(text, pos)
        parsed = _descriptor(tokens)
        if url and parsed is not None:
            out.append(SrcsetCandidate(url, parsed[0], parsed[1]))
    return out


def largest(candidates: list[SrcsetCandidate]) -> SrcsetCandidate | None:
    """The biggest image: width descriptors outrank densities; real URLs outrank data: URIs."""
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda c: (not c.url.lower().startswith("data:"), c.unit == "w", c.size),
    )


def resolve(base: str, url: str) -> str:
    """url made absolute against base; a URL urljoin cannot parse is kept as written."""
    try:
        return urljoin(base, url.strip())
    except ValueError:
        return url.strip()


def page_base(tree: HTMLParser, page_url: str) -> str:
    """The URL relative links resolve against: the first `<base href>`, else the page."""
    node = tree.css_first("base[href]")
    href = (node.attributes.get("href") or "").strip() if node is not None else ""
    return resolve(page_url, href) if href else page_url


def _img_candidates(img) -> list[SrcsetCandidate]:
    attrs = img.attributes
    found: list[SrcsetCandidate] = []
    for name in ("src", "data-src"):
        url = (attrs.get(name) or "").strip()
        if url:
            found.append(SrcsetCandidate(url, 1.0, "x"))
    for name in ("srcset", "data-srcset"):
        found += parse_srcset(attrs.get(name))
    parent = img.parent
    if parent is not None and parent.tag == "picture":
        for source in parent.css("source"):
            kind = (source.attributes.get("type") or "image/").strip().lower()
            if kind.startswith("image/") and "svg" not in kind:  # vectors do not resize
                found += parse_srcset(source.attributes.get("srcset"))
    return found


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = _SPACE.sub(" ", text).strip()
    return text or None


def _figcaption(img) -> str | None:
    node = img.parent
    for _ in range(_FIGURE_DEPTH):
        if node is None:
            return None
        if node.tag == "figure":
            caption = node.css_first("figcaption")
            return _clean(caption.text(separator=" ")) if caption is not None else None
        node = node.parent
    return None


def image_caption(img, text: str = "alt") -> str | None:
    """The caption of one `<img>`: alt, or the chosen alternative where the page has it."""
    alt = img.attributes.get("alt")
    if text == "title":
        return _clean(img.attributes.get("title")) or alt
    if text == "figcaption":
        return _figcaption(img) or alt
    return alt


@dataclass
class ParsedPage:
    """What one page offers: (absolute image URL, caption) pairs and absolute links."""

    images: list[tuple[str, str | None]]
    links: list[str]


def parse_page(html: bytes | str, page_url: str, text: str = "alt") -> ParsedPage:
    """Images (largest candidate per `<img>`) and `<a href>` links of one page, parsed once."""
    if text not in TEXT_MODES:
        raise ValueError(f"page text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
    tree = HTMLParser(html)
    base = page_base(tree, page_url)
    images = []
    for img in tree.css("img"):
        best = largest(_img_candidates(img))
        if best is not None:
            images.append((resolve(base, best.url), image_caption(img, text)))
    links = []
    for anchor in tree.css("a[href]"):
        href = (anchor.attributes.get("href") or "").strip()
        if href:
            url = urldefrag(resolve(base, href))[0]
            if urlsplit(url).scheme in ("http", "https"):
                links.append(url)
    return ParsedPage(images, links)


def extract_images(
    html: bytes | str, page_url: str, text: str = "alt"
) -> list[tuple[str, str | None]]:
    """(absolute image URL, caption) for every `<img>` that names an image."""
    return parse_page(html, page_url, text).images
