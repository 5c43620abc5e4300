"""Byte-level BPE tokenizer with OpenAI CLIP's rules, for OpenAI's merges or a learned vocabulary.

Rules (as in OpenAI's `SimpleTokenizer`): ftfy, HTML unescape twice, whitespace collapsed,
lower-case; a regex splits words, numbers (one digit each) and punctuation runs; each
piece is mapped byte-by-byte to printable characters and merged by BPE, with `</w>`
marking the end of a piece; `<start_of_text>` and `<end_of_text>` wrap the ids and
truncation keeps the end token. The vocabulary is 256 bytes, the same with `</w>`, one
token per merge, then the two special tokens, so end-of-text always has the largest id
(the text tower pools there by argmax). A learned vocabulary only changes the merges.

Speed: pieces are cached (a caption corpus repeats words), printable ASCII text without
`&` skips ftfy (which cannot change it), and long texts stop once the context is full.
"""

from __future__ import annotations

import collections
import functools
import gzip
import heapq
import html
import importlib.util
import json
import os
import pathlib
from collections.abc import Iterable

import ftfy
import numpy as np
import regex
import torch

SOT = "<start_of_text>"
EOT = "<end_of_text>"
OPENAI_MERGES = 49152 - 256 - 2  # merges OpenAI's vocabulary uses from its file (48,894)
OPENAI_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_CACHE_LIMIT = 1_000_000  # pieces cached at most
_LONG_TEXT = 2_000  # characters beyond which encoding stops early


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable character: printable Latin-1 bytes to themselves, the rest
    (control, space, ...) to code points from 256 up, so BPE never sees whitespace."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in keep}  # insertion order is the vocabulary order
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(keep))
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# Split into: special tokens, English contractions, letter runs, single digits, other runs.
PIECE_RE = regex.compile(
    "|".join(regex.escape(s) for s in (SOT, EOT))
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def clean_text(text: str) -> str:
    """OpenAI's pre-processing: ftfy, HTML unescape (twice), collapse whitespace, lower-case."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return " ".join(text.split()).lower()  # ftfy and unescape are identities here
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def split_pieces(text: str) -> list[str]:
    """Cleaned text -> byte-mapped pieces, the units BPE works on."""
    return ["".join(BYTE_TO_CHAR[b] for b in p.encode("utf-8")) for p in PIECE_RE.findall(text)]


def _symbols() -> list[str]:
    base = list(BYTE_TO_CHAR.values())
    return base + [c + "</w>" for c in base]


class BPETokenizer:
    """Callable: `tok(list_of_str, context_length=77) -> LongTensor[N, context_length]` (0-padded)."""

    def __init__(
        self, merges: list[tuple[str, str]], context_length: int = 77, name: str = "learned"
    ):
        self.merges = [tuple(m) for m in merges]
        self.name = name
        self.context_length = int(context_length)
        vocab = _symbols() + ["".join(m) for m in self.merges] + [SOT, EOT]
        self.encoder = dict(zip(vocab, range(len(vocab)), strict=True))
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self.vocab_size = self.eot_id + 1
        self._cache: dict[str, tuple[int, ...]] = {SOT: (self.sot_id,), EOT: (self.eot_id,)}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_merges_file(
        cls, path: str | os.PathLike, n_merges: int = OPENAI_MERGES, **kw
    ) -> BPETokenizer:
        """OpenAI's format: a `#version` header line, then one `a b` merge a line (plain or .gz)."""
        return cls(list(_read_merges(str(path), n_merges)), **kw)

    def spec(self) -> dict:
        """Plain JSON-able dict that get_tokenizer() turns back into this tokenizer."""
        if self.name == "openai":
            return {"type": "openai", "context_length": self.context_length}
        return {
            "type": "bpe",
            "name": self.name,
            "context_length": self.context_length,
            "merges": [f"{a} {b}" for a, b in self.merges],
        }

    def save(self, path: str | os.PathLike) -> None:
        pathlib.Path(path).write_text(json.dumps(self.spec()))

    # -- encoding ------------------------------------------------------------------------
    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Merge the lowest-ranked adjacent pair everywhere, repeatedly, as OpenAI does."""
        word = [*piece[:-1], piece[-1] + "</w>"]
        ranks = self.ranks
        while len(word) > 1:
            best, best_rank = None, len(ranks)
            for pair in zip(word, word[1:], strict=False):
                r = ranks.get(pair)
                if r is not None and r < best_rank:
                    best, best_rank = pair, r
            if best is None:
                break
            a, b = best
            merged, i, n = [], 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == a and word[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(self.encoder[s] for s in word)

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        hit = self._cache.get(piece)
        if hit is None:
            hit = self._bpe("".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8")))
            if len(self._cache) >= _CACHE_LIMIT:  # bound memory on endless corpora
                self._cache.clear()
                self._cache.update({SOT: (self.sot_id,), EOT: (self.eot_id,)})
            self._cache[piece] = hit
        return hit

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Ids of `text` without start/end tokens; stops once `max_tokens` ids are known."""
        if not isinstance(text, str):
            raise TypeError(f"tokenizer input must be str, got {type(text).__name__}")
        text = clean_text(text)
        ids: list[int] = []
        cache, piece_ids = self._cache, self._piece_ids
        if max_tokens is None or len(text) <= _LONG_TEXT:
            for piece in PIECE_RE.findall(text):
                ids += cache.get(piece) or piece_ids(piece)
            return ids if max_tokens is None else ids[:max_tokens]
        for match in PIECE_RE.finditer(text):  # long text: stop once the context is full
            ids += piece_ids(match.group())
            if len(ids) >= max_tokens:
                break
        return ids[:max_tokens]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length < 2:
            raise ValueError(f"context_length must be >= 2, got {length}")
        out = np.zeros((len(texts), length), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, not str")
            ids = self.encode(text, max_tokens=length - 2)
            out[i, 0] = self.sot_id
            out[i, 1 : len(ids) + 1] = ids
            out[i, len(ids) + 1] = self.eot_id
        return torch.from_numpy(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids, ignoring start/end tokens and anything after end-of-text."""
        data = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                break
            if i == self.sot_id:
                continue
            symbol = self.decoder[i]
            word_end = symbol.endswith("</w>")
            data.extend(CHAR_TO_BYTE[c] for c in (symbol[:-4] if word_end else symbol))
            if word_end:
                data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()


@functools.lru_cache(maxsize=4)
def _read_merges(path: str, n_merges: int) -> tuple[tuple[str, str], ...]:
    try:
        raw = gzip.open(path).read() if path.endswith(".gz") else pathlib.Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read BPE merges file {path}: {e}") from None
    lines = raw.decode("utf-8").split("\n")
    if lines and "#version" in lines[0]:  # OpenAI's header: "bpe_simple_vocab_16e6.txt#version: 0.2
        lines = lines[1:]
    merges = tuple(tuple(line.split()) for line in lines[:n_merges])
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path} is not a BPE merges file (expected 'a b' on each line)")
    return merges


# -- OpenAI's merges ----------------------------------------------------------------------
def find_openai_bpe(path: str | os.PathLike | None = None) -> pathlib.Path:
    """An explicit path, else $WIT_BPE_PATH, else the data file inside an installed open_clip.

    open_clip is located with importlib's finder and never imported: the file is data.
    """
    if path is None:
        path = os.environ.get("WIT_BPE_PATH")
    if path is None:
        spec = importlib.util.find_spec("open_clip")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = pathlib.Path(folder) / OPENAI_BPE_FILE
            if candidate.is_file():
                return candidate
        raise ValueError(
            f"OpenAI's BPE merges ({OPENAI_BPE_FILE}) not found: install open-clip-torch, "
            "set WIT_BPE_PATH, or pass the file's path"
        )
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"BPE merges file not found: {path}")
    return path


def openai_tokenizer(
    bpe_path: str | os.PathLike | None = None, context_length: int = 77
) -> BPETokenizer:
    return BPETokenizer.from_merges_file(
        find_openai_bpe(bpe_path), context_length=context_length, name="openai"
    )


def get_tokenizer(
    spec: str | os.PathLike | dict = "openai", bpe_path: str | os.PathLike | None = None
) -> BPETokenizer:
    """ "openai", a saved tokenizer (.json from tok.save) or merges file, or a dict from tok.spec()."""
    if isinstance(spec, dict):
        kind = spec.get("type")
        context_length = int(spec.get("context_length", 77))
        if kind == "openai":
            return openai_tokenizer(bpe_path, context_length)
        if kind == "bpe" and isinstance(spec.get("merges"), list):
            merges = [tuple(m.split(" ")) for m in spec["merges"]]
            if any(len(m) != 2 for m in merges):
                raise ValueError("tokenizer spec has a malformed merge (expected 'a b')")
            return BPETokenizer(merges, context_length, name=spec.get("name", "learned"))
        raise ValueError(
            f"not a tokenizer spec: type={kind!r} (expected 'openai' or 'bpe' with merges)"
        )
    if str(spec) == "openai":
        return openai_tokenizer(bpe_path)
    path = pathlib.Path(spec)
    if not path.is_file():
        raise ValueError(f"tokenizer {str(spec)!r} is neither 'openai' nor an existing file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"tokenizer file {path} does not hold a tokenizer spec")
        return get_tokenizer(data, bpe_path)
    return BPETokenizer.from_merges_file(
        path, name="openai" if path.name == OPENAI_BPE_FILE else "file"
    )


# -- learning a vocabulary ----------------------------------------------------------------
def learn_tokenizer(
    captions: Iterable[str], vocab_size: int, context_length: int = 77, min_frequency: int = 2
) -> BPETokenizer:
    """Learn `vocab_size - 514` merges from captions, the same merges in any process.

    The captions get exactly the pre-processing and piece split used at encode time, so the
    merges fit the encoder. Each step merges the most frequent adjacent pair; ties go to
    the smallest pair (compared as strings), so the result is a function of the captions
    alone. (The `tokenizers` library's trainer, used before, broke ties in hash order:
    four processes gave four merge lists, and DDP ranks could tokenize a caption apart.)
    The vocabulary is smaller when the corpus supports fewer merges (every merge must be
    seen `min_frequency` times); `tok.vocab_size` is the true size.
    """
    n_merges = int(vocab_size) - 512 - 2
    if n_merges < 0:
        raise ValueError(
            f"vocab_size must be at least 514 (bytes, bytes+</w>, 2 specials), got {vocab_size}"
        )
    specials = {SOT, EOT}
    counts: collections.Counter = collections.Counter()
    for caption in captions:
        if isinstance(caption, str):
            counts.update(p for p in split_pieces(clean_text(caption)) if p not in specials)
    merges = learn_merges(counts, n_merges, min_frequency)
    return BPETokenizer(merges, context_length, name="learned")


def learn_merges(
    piece_counts: dict[str, int], n_merges: int, min_frequency: int = 2
) -> list[tuple[str, str]]:
    """Byte-level BPE training on counted pieces (each ends in `</w>`), deterministically.

    Pair counts are kept up to date incrementally: merging a pair touches only the words
    that hold it (found through `where`), and a heap with lazy deletion yields the next
    best pair, ordered by (-count, left, right).
    """
    words: list[list[str]] = []
    freqs: list[int] = []
    for piece, n in sorted(piece_counts.items()):
        if piece:
            words.append([*piece[:-1], piece[-1] + "</w>"])
            freqs.append(int(n))
    pair_counts: dict[tuple[str, str], int] = collections.defaultdict(int)
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, (word, n) in enumerate(zip(words, freqs, strict=True)):
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] += n
            where[pair].add(i)
    heap = [(-n, a, b) for (a, b), n in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    done: set[tuple[str, str]] = set()
    while heap and len(merges) < n_merges:
        neg, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale: the pair's count changed and a fresh entry was pushed
        if -neg < min_frequency:
            break
        if pair not in done:  # a pair can come back (a later merge rebuilds a symbol)
            merges.append(pair)
            done.add(pair)
        joined = a + b
        changed: set[tuple[str, str]] = set()
        for i in where.pop(pair, ()):
            word, n = words[i], freqs[i]
            merged, j, size = [], 0, len(word)
            while j < size:
                if j < size - 1 and word[j] == a and word[j + 1] == b:
                    merged.append(joined)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            if len(merged) == size:
                continue  # the pair left this word through an earlier merge
            delta = collections.Counter(zip(merged, merged[1:], strict=False))
            delta.subtract(zip(word, word[1:], strict=False))
            for p, d in delta.items():
                if d:
                    pair_counts[p] += d * n
                    changed.add(p)
                    if d > 0:
                        where[p].add(i)
            words[i] = merged
        pair_counts.pop(pair, None)
        for p in changed:
            n = pair_counts.get(p, 0)
            if n > 0:
                heapq.heappush(heap, (-n, *p))
            else:
                pair_counts.pop(p, None)
    return merges
