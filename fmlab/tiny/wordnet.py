"""A reader for Princeton WordNet 3.0's database files (`data.noun`, `data.verb`, `data.adj`, `data.adv`
and `cntlist.rev`), the source of the embedded default's real English (`fmlab.tiny.real_text`).

Debian and Ubuntu ship the files in the `wordnet-base` package, under `/usr/share/wordnet/`. The layout
follows WordNet's own manual pages (wndb(5), lexnames(5), senseidx(5), cntlist(5)); one line per synset:

    offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} p_cnt (ptr){p_cnt} [frames] | gloss

`w_cnt` and `lex_id` are hexadecimal, `p_cnt` decimal, a pointer is four fields (symbol, offset, pos,
source/target), verbs add `f_cnt` frames of three fields (`+ f_num w_num`). The gloss holds definitions
and double-quoted example sentences separated by semicolons. Lines that start with two spaces are the
licence header. A line that breaks this layout is an FmlabError naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fmlab.errors import FmlabError

DEFAULT_DIR = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
INSTALL_HINT = "install Princeton WordNet 3.0 (`apt-get install wordnet-base` on Debian/Ubuntu) or pass its folder"
DATA_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
SS_TYPES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
SENSE_KEY_POS = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}  # senseidx(5): the ss_type's number

# lexnames(5): the lexicographer files, by number. Fixed since WordNet 2.0; Debian does not ship the file.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()


@dataclass(frozen=True)
class Synset:
    """One synset: its words (underscores as spaces, adjective markers like "(a)" dropped), its
    lexicographer file (the semantic domain), and its gloss split into definition and examples."""

    offset: int
    pos: str  # noun, verb, adj, adv
    ss_type: str  # n, v, a, s (adjective satellite), r
    lexname: str  # e.g. "noun.food"
    lemmas: tuple[str, ...]
    lex_ids: tuple[int, ...]
    definition: str
    examples: tuple[str, ...]
    where: str  # "file:line", for messages

    def sense_key(self, i: int) -> str:
        """The sense key of word `i` (senseidx(5)); satellites' head fields are left empty, so their keys
        never match `cntlist.rev` and they count as untagged."""
        lemma = self.lemmas[i].lower().replace(" ", "_")
        lexfile = LEXNAMES.index(self.lexname)
        return f"{lemma}%{SENSE_KEY_POS[self.ss_type]}:{lexfile:02d}:{self.lex_ids[i]:02d}::"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FmlabError(f"WordNet file {path} not found: {INSTALL_HINT} (e.g. --wordnet /usr/share/wordnet)")
    return path


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Definitions and quoted examples of a gloss: `a; b; "ex one"; "ex two"` -> ("a; b", ("ex one", "ex two")).

    Semicolons inside quotes do not split; text after an example's closing quote (an attribution such
    as `- Shakespeare`) is dropped.
    """
    parts, current, quoted = [], [], False
    for ch in gloss:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    definitions, examples = [], []
    for part in filter(None, parts):
        if part.startswith('"'):
            end = part.find('"', 1)
            text = part[1:end] if end > 0 else part[1:]
            if text.strip():
                examples.append(text.strip())
        else:
            definitions.append(part)
    return "; ".join(definitions), tuple(examples)


def _clean_word(word: str) -> str:
    if word.endswith(")") and "(" in word:  # adjective syntactic markers: (a), (p), (ip)
        word = word[: word.rindex("(")]
    return word.replace("_", " ")


def _number(text: str, base: int, field: str) -> int:
    try:
        return int(text, base)
    except ValueError:
        kind = "hexadecimal" if base == 16 else "decimal"
        raise ValueError(f"{field} {text!r} is not a {kind} number") from None


def parse_line(line: str, where: str) -> Synset:
    """One data-file line as a Synset; FmlabError naming `where` (file:line) when its layout is broken."""

    def bad(what: str) -> FmlabError:
        return FmlabError(f"{where}: malformed WordNet data line ({what}): {line[:80]!r}")

    if " | " not in line and not line.rstrip().endswith("|"):
        raise bad("no ' | ' before the gloss")
    head, _, gloss = line.partition(" | ") if " | " in line else (line.rstrip()[:-1], "", "")
    fields = head.split()
    try:
        if len(fields) < 6:
            raise ValueError("too few fields")
        offset, lex_filenum, ss_type = (
            _number(fields[0], 10, "offset"),
            _number(fields[1], 10, "lex_filenum"),
            fields[2],
        )
        if ss_type not in SS_TYPES:
            raise ValueError(f"unknown synset type {ss_type!r}")
        if not 0 <= lex_filenum < len(LEXNAMES):
            raise ValueError(f"unknown lexicographer file number {lex_filenum}")
        w_cnt = _number(fields[3], 16, "w_cnt")
        words = fields[4 : 4 + 2 * w_cnt]
        if w_cnt == 0 or len(words) != 2 * w_cnt:
            raise ValueError(f"w_cnt {fields[3]} but {len(words) // 2} words")
        lemmas = tuple(_clean_word(w) for w in words[0::2])
        lex_ids = tuple(_number(x, 16, f"lex_id (w_cnt {fields[3]} wrong?)") for x in words[1::2])
        at = 4 + 2 * w_cnt
        p_cnt = _number(fields[at], 10, "p_cnt")
        rest = fields[at + 1 :]
        if len(rest) < 4 * p_cnt:
            raise ValueError(f"p_cnt {p_cnt} but {len(rest) // 4} pointers")
        rest = rest[4 * p_cnt :]
        if ss_type == "v" and rest:  # frames: f_cnt, then (+ f_num w_num) each
            f_cnt = _number(rest[0], 10, "f_cnt")
            if len(rest) != 1 + 3 * f_cnt:
                raise ValueError(f"f_cnt {f_cnt} but {(len(rest) - 1) / 3:g} frames")
        elif rest:
            raise ValueError(f"{len(rest)} unexpected fields before the gloss")
    except (ValueError, IndexError) as err:
        raise bad(str(err)) from None
    definition, examples = split_gloss(gloss.strip())
    return Synset(
        offset=offset,
        pos=SS_TYPES[ss_type],
        ss_type=ss_type,
        lexname=LEXNAMES[lex_filenum],
        lemmas=lemmas,
        lex_ids=lex_ids,
        definition=definition,
        examples=examples,
        where=where,
    )


def read_data_file(path: str | os.PathLike) -> list[Synset]:
    """Every synset of one `data.<pos>` file, in file order (the licence header is skipped)."""
    path = _require(Path(path))
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            out.append(parse_line(line.rstrip("\n"), f"{path}:{lineno}"))
    return out


def read_synsets(root: str | os.PathLike = DEFAULT_DIR, parts: Iterable[str] = tuple(DATA_FILES)) -> list[Synset]:
    """The synsets of the given parts of speech (noun, verb, adj, adv), in that order."""
    root = Path(root)
    if not root.is_dir():
        raise FmlabError(f"WordNet folder {root} not found: {INSTALL_HINT}")
    return [s for part in parts for s in read_data_file(root / DATA_FILES[part])]


def read_sense_counts(root: str | os.PathLike = DEFAULT_DIR) -> dict[str, int]:
    """`cntlist.rev`: sense key -> how often the sense was tagged in the semantic concordance texts
    (cntlist(5)); a rough frequency of the word in that sense in ordinary English."""
    path, out = _require(Path(root) / "cntlist.rev"), {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) != 3 or "%" not in fields[0] or not fields[2].isdigit():
                raise FmlabError(f"{path}:{lineno}: malformed cntlist line (want 'sense_key sense_number count')")
            out[fields[0]] = int(fields[2])
    return out


def synset_count(synset: Synset, counts: dict[str, int]) -> int:
    """The tagged count of a synset: the sum over its words' senses."""
    return sum(counts.get(synset.sense_key(i), 0) for i in range(len(synset.lemmas)))
