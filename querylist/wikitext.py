"""Wikitext to the words a reader sees: prose, link texts and headings; no markup.

The parse is mwparserfromhell's. What is dropped: templates (infoboxes, citations,
navboxes, `{{convert}}` ...), template arguments, references (`<ref>`), comments, tables,
category links, file/image/media links (with their captions), interlanguage links, bare
URLs, behaviour switches (`__NOTOC__`), and the contents of tags that show no prose
(`<math>`, `<gallery>`, `<syntaxhighlight>`, `<timeline>` ...). What is kept: text,
the visible text of wikilinks (`[[Paris|the capital]]` gives "the capital", `[[cat]]s`
"cats"), titles of bracketed external links, headings, the contents of formatting tags,
and HTML entities as their characters.

Where something is dropped, or a block ends (a heading, a list item, a paragraph, `<br>`),
the output holds `BREAK`, so that words on either side never count as a pair: in
the rendered page they are not next to each other either. Every line end is such a break:
articles keep a paragraph on one line, and a line end otherwise ends a list item, a
heading or a table row.

Speed: references and comments are cut with two regular expressions before the parse.
They are the bulk of the markup (a citation template per reference) and cannot nest, so
the cut is exact and halves the parse time on real articles. Tables are cut before the
parse too, by their line-start marks with nesting counted (`strip_tables`): the parse
takes a third less, and on the 106 articles of the test excerpt every word and pair
comes out the same as when the parser finds the tables. Bold and italic quotes are
not parsed into tags (`skip_style_tags`): that is faster, and with unbalanced quotes the
full parse can swallow the rest of a page into one table (it did on "Alaska"). The quote
runs are removed from the text afterwards the way MediaWiki reads them, line by line
(`strip_quotes`), so `''Iliad''s` is "Iliads" and `''A Modest Proposal'''s` keeps its
apostrophe: "A Modest Proposal's".
"""

from __future__ import annotations

import html
import re

import mwparserfromhell
from mwparserfromhell.definitions import INVISIBLE_TAGS
from mwparserfromhell.nodes import (
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Text,
    Wikilink,
)

#: Put between two pieces of text that must not form a pair (a dropped template, a table,
#: a line end). Not whitespace, not alphanumeric, and not allowed in XML 1.0, so it never
#: occurs in wikitext itself. (Not NUL: mwparserfromhell's tokenizer stops there.)
BREAK = "\x01"
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# A self-closing <ref .../> first, then <ref ...> ... </ref>. "<references/>" is not a ref:
# \b needs a non-word character after "ref".
_REF = re.compile(r"<ref\b[^>]*/\s*>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_SWITCH = re.compile(r"__[A-Z]+__")
_TABLE_MARK = re.compile(r"(?m)^[ \t:]*(\{\||\|\}(?!\}))")
_QUOTES = re.compile(r"('{2,})")
#: Marks where markup was in the source (an inline tag, a link) and nothing is in the
#: text: quote runs on either side stay apart (`''θ''<sub>''i''</sub>` is not a run of
#: four), then it is removed. Not allowed in XML 1.0, so never in wikitext.
SEAM = "\x02"

#: Tags whose contents are not prose (or are tables), dropped whole.
DROPPED_TAGS = frozenset(
    {
        *INVISIBLE_TAGS, "ref", "references", "chem", "ce", "hiero", "syntaxhighlight",
        "source", "pre", "nowiki", "templatestyles", "mapframe", "maplink", "indicator",
        "table", "tr", "td", "th", "caption", "noinclude", "includeonly", "onlyinclude",
        "style", "script",
    }
)  # fmt: skip
#: Tags that format a run of text without ending it: no break around their contents.
INLINE_TAGS = frozenset(
    {
        "b", "i", "u", "s", "small", "big", "span", "sup", "sub", "abbr", "font", "em",
        "strong", "code", "tt", "var", "kbd", "samp", "del", "ins", "strike", "cite", "q",
        "time", "bdi", "bdo", "mark", "ruby", "rb", "rt", "rp", "dfn", "data", "wbr",
    }
)  # fmt: skip
#: Link namespaces that render no text in the article (or an image), and
#: interlanguage links ("[[de:Hund]]"), which render in the sidebar.
_HIDDEN_LINK = re.compile(r"\s*(?:(?i:file|image|media|category)\s*:|[a-z]{2,3}(?:-[a-z]+)*:)")


def pre_strip(wikitext: str) -> str:
    """Cut comments, references, tables and behaviour switches (see the module docstring)."""
    if "<!--" in wikitext:
        wikitext = _COMMENT.sub("", wikitext)
    if "<ref" in wikitext or "<REF" in wikitext or "<Ref" in wikitext:
        wikitext = _REF.sub(BREAK, wikitext)
    if "{|" in wikitext:
        wikitext = strip_tables(wikitext)
    if "__" in wikitext:
        wikitext = _SWITCH.sub(BREAK, wikitext)
    return wikitext


def strip_tables(wikitext: str) -> str:
    """Cut every `{| ... |}` table, nested ones with it; unchanged if one is left open.

    Table marks count only at the start of a line (after spaces or the `:` of an indented
    table), as in MediaWiki; `|}}` closes a template, not a table.
    """
    out: list[str] = []
    depth, last = 0, 0
    for m in _TABLE_MARK.finditer(wikitext):
        if m.group(1) == "{|":
            if depth == 0:
                out.append(wikitext[last : m.start(1)])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                out.append(BREAK)
                last = m.end(1)
    if depth:
        return wikitext  # an unclosed table: left to the parser
    out.append(wikitext[last:])
    return "".join(out)


def visible_text(wikitext: str) -> str:
    """The prose of a page's wikitext, with `BREAK` where text does not run on."""
    code = mwparserfromhell.parse(pre_strip(wikitext), skip_style_tags=True)
    out: list[str] = []
    _walk(code, out)
    text = "".join(out)
    if "''" in text:
        text = "\n".join(strip_quotes(x) if "''" in x else x for x in text.split("\n"))
    if SEAM in text:
        text = text.replace(SEAM, "")
    return text.replace("\n", BREAK)


def strip_quotes(line: str) -> str:
    """Remove the bold/italic quote runs of one line, keeping apostrophes that are text.

    MediaWiki's doQuotes: a run of 4 is an apostrophe and a bold mark, a run of more than
    5 is apostrophes and a bold-italic mark; and when a line has an odd number of italic
    marks and an odd number of bold marks, one bold mark is an apostrophe followed by an
    italic mark: the first one after a one-letter word, else after a longer word, else
    after a space.
    """
    parts = _QUOTES.split(line)  # odd positions are runs of two or more apostrophes
    italics = bolds = 0
    for k in range(1, len(parts), 2):
        n = len(parts[k])
        if n == 4 or n > 5:
            keep = 3 if n == 4 else 5
            parts[k - 1] += "'" * (n - keep)
            parts[k] = parts[k][:keep]
            n = keep
        italics += n in (2, 5)
        bolds += n in (3, 5)
    if italics % 2 and bolds % 2:
        single = multi = space = None
        for k in range(1, len(parts), 2):
            if len(parts[k]) != 3:
                continue
            before = parts[k - 1]
            x1, x2 = before[-1:] or " ", before[-2:-1] or " "
            if x1 == " ":
                space = k if space is None else space
            elif x2 == " ":
                single = k
                break
            elif multi is None:
                multi = k
        k = next((i for i in (single, multi, space) if i is not None), None)
        if k is not None:
            parts[k - 1] += "'"
    return "".join(parts[0::2])


def _walk(code, out: list[str]) -> None:
    for node in code.nodes:
        kind = type(node)
        if kind is Text:
            out.append(node.value)
        elif kind is Wikilink:
            title = str(node.title)
            if _HIDDEN_LINK.match(title):
                out.append(BREAK)
            elif node.text is not None:
                out.append(SEAM)
                _walk(node.text, out)
                out.append(SEAM)
            else:  # [[:Category:X]] shows "Category:X"; entities in titles are decoded
                out.append(SEAM + html.unescape(title.strip().removeprefix(":")) + SEAM)
        elif kind is Tag:
            _tag(node, out)
        elif kind is HTMLEntity:
            out.append(node.normalize())
        elif kind is Heading:
            out.append(BREAK)
            _walk(node.title, out)
            out.append(BREAK)
        elif kind is ExternalLink:
            if node.brackets and node.title:
                _walk(node.title, out)
            else:  # a bare URL, or [http://...] shown as a footnote number
                out.append(BREAK)
        elif kind is Comment:
            continue
        else:  # Template, Argument ({{{1}}}), anything newer: not prose
            out.append(BREAK)


def _tag(node: Tag, out: list[str]) -> None:
    name = str(node.tag).strip().lower()
    if name in DROPPED_TAGS:
        out.append(BREAK)
        return
    inline = name in INLINE_TAGS
    if node.self_closing or node.contents is None:
        if not inline:
            out.append(BREAK)  # <br/>, <hr/>, list bullets (* # : ;)
        return
    if inline:
        out.append(SEAM)
        _walk(node.contents, out)
        out.append(SEAM)
    else:
        out.append(BREAK)
        _walk(node.contents, out)
        out.append(BREAK)
