"""A small reader of WordNet 3.0's noun database (``data.noun``): synset words, glosses and hypernyms.

ImageNet synset ids (``n02084071``) are WordNet 3.0 noun offsets, and in ``data.noun`` an offset
*is* the byte position of its synset's line, so a synset is read with one seek. The file comes
from Debian's ``wordnet-base`` package (``/usr/share/wordnet/data.noun``); ``WNSEARCHDIR``, the
variable WordNet's own tools read, points elsewhere.

Line format (``wndb(5WN)``)::

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id…] p_cnt [ptr_symbol offset pos source/target…] | gloss

``w_cnt`` is two hexadecimal digits, ``p_cnt`` three decimal ones. Hypernyms are the pointers
``@`` (hypernym) and ``@i`` (instance hypernym) to other nouns.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import RepLensError

WORDNET_ENV = "WNSEARCHDIR"
DEFAULT_DIRS: tuple[Path, ...] = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"))
HYPERNYM_POINTERS = frozenset({"@", "@i"})
INSTALL_HINT = "apt-get install wordnet-base"


class WordNetUnavailableError(RepLensError):
    """WordNet 3.0's noun database is not installed (or is another WordNet version)."""


@dataclass(frozen=True)
class Synset:
    """One noun synset: its offset, words (underscores kept), hypernym offsets and gloss."""

    offset: int
    words: tuple[str, ...]
    hypernyms: tuple[int, ...]
    gloss: str

    @property
    def name(self) -> str:
        """The first word, as text ("domestic_cat" → "domestic cat")."""
        return self.words[0].replace("_", " ")

    @property
    def wnid(self) -> str:
        return wnid(self.offset)


def wnid(offset: int) -> str:
    """The ImageNet id of a noun offset: 2084071 → "n02084071"."""
    return f"n{offset:08d}"


def parse_wnid(value: str) -> int:
    """The noun offset of an ImageNet id: "n02084071" → 2084071."""
    if len(value) != 9 or value[0] != "n" or not value[1:].isdigit():
        raise ValueError(f"{value!r} is not an ImageNet/WordNet noun id like 'n02084071'")
    return int(value[1:])


def parse_synset_line(line: str) -> Synset:
    """Parse one ``data.noun`` line (see the module docstring)."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    try:
        offset, n_words = int(fields[0]), int(fields[3], 16)
        words = tuple(fields[4 : 4 + 2 * n_words : 2])
        at = 4 + 2 * n_words
        n_pointers = int(fields[at])
        hypernyms = []
        for i in range(n_pointers):
            symbol, target, pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
            if symbol in HYPERNYM_POINTERS and pos == "n":
                hypernyms.append(int(target))
    except (IndexError, ValueError) as exc:
        raise ValueError(f"not a WordNet data.noun synset line: {line[:80]!r}") from exc
    if len(words) != n_words:
        raise ValueError(f"not a WordNet data.noun synset line: {line[:80]!r}")
    return Synset(offset, words, tuple(hypernyms), gloss.strip())


def find_data_noun(directories: Iterable[str | os.PathLike[str]] | None = None) -> Path:
    """The ``data.noun`` file: in ``directories``, else ``$WNSEARCHDIR``, else Debian's location."""
    if directories is None:
        env = os.environ.get(WORDNET_ENV)
        directories = ([Path(env)] if env else []) + list(DEFAULT_DIRS)
    searched = [Path(d) for d in directories]
    for directory in searched:
        if (directory / "data.noun").is_file():
            return directory / "data.noun"
    raise WordNetUnavailableError(
        "WordNet 3.0 is not installed (no data.noun in "
        f"{', '.join(str(d) for d in searched) or 'any folder'}). Install Debian's wordnet-base package "
        f"({INSTALL_HINT}), or set {WORDNET_ENV} to the folder holding WordNet 3.0's data.noun.",
        page_message="ImageNet labels need WordNet 3.0, which is not installed on this server. Ask whoever runs it "
        "to install the wordnet-base package, or pick another labelling method.",
    )


class WordNet:
    """Noun synsets read on demand from a ``data.noun`` file (thread-safe, cached per offset)."""

    def __init__(self, data_noun: str | os.PathLike[str]) -> None:
        self.path = Path(data_noun)
        self._cache: dict[int, Synset] = {}
        self._lock = threading.Lock()

    @classmethod
    def find(cls, directories: Iterable[str | os.PathLike[str]] | None = None) -> WordNet:
        return _open(find_data_noun(directories))

    def synset(self, offset: int) -> Synset:
        """The synset at ``offset``; a file whose line there is not that synset is not WordNet 3.0."""
        with self._lock:
            hit = self._cache.get(offset)
            if hit is not None:
                return hit
            with self.path.open("rb") as handle:
                handle.seek(offset)
                raw = handle.readline()
        line = raw.decode("utf-8", errors="replace")
        try:
            found = parse_synset_line(line)
        except ValueError:
            found = None
        if found is None or found.offset != offset:
            raise WordNetUnavailableError(
                f"{self.path} has no noun synset at offset {offset} ({wnid(offset)}): it is not WordNet 3.0, "
                f"whose offsets ImageNet ids use. Install Debian's wordnet-base ({INSTALL_HINT}) or point "
                f"{WORDNET_ENV} at WordNet 3.0's dict folder.",
                page_message="The WordNet installed on this server is not version 3.0, which ImageNet labels need. "
                "Pick another labelling method.",
            )
        with self._lock:
            self._cache[offset] = found
        return found

    def ancestors(self, offset: int) -> frozenset[int]:
        """``offset`` and every synset above it along hypernym and instance-hypernym pointers."""
        seen = {offset}
        todo = [offset]
        while todo:
            for parent in self.synset(todo.pop()).hypernyms:
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return frozenset(seen)


@functools.lru_cache(maxsize=4)
def _open(path: Path) -> WordNet:
    return WordNet(path)
