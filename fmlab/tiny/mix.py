"""The pretraining mix of the embedded default `fmlab-tiny`: which sources it reads, under which licence,
and how many tokens each contributes (`fmlab build-assets` records all three in `assets/manifest.json`).

| source | what | licence |
|---|---|---|
| `synthetic-chats` | fmlab's chats: stories, Q&A, drills in copying and counting (`fmlab.tiny.corpus`) | fmlab's (MIT) |
| `synthetic-text` | fmlab's plain stories and fact paragraphs | fmlab's (MIT) |
| `json-drills` | one-turn chats answered with a JSON object of the corpus's facts | fmlab's (MIT) |
| `wordnet-text` | Princeton WordNet 3.0's definitions and example sentences as plain paragraphs | WordNet 3.0 |
| `wordnet-chats` | "What does "x" mean?" chats answered from WordNet (a sample) | WordNet 3.0 |

WordNet (Debian's `wordnet-base`) brings real, human-written English over the whole vocabulary; the
synthetic chats keep the chat behaviour and the skills the play task builds on. None of them shows the
play format or a WordNet domain label, and the real-text task's valid and test synsets are left out of
both WordNet sources, so both example tasks stay the adapter's to learn (docs/real-text.md).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fmlab.data.chat_template import render_text
from fmlab.errors import FmlabError
from fmlab.tiny.corpus import chat_samples, json_chats, plain_texts, tokenizer_texts
from fmlab.tiny.real_text import definition_chats, held_out_keys, pretraining_texts
from fmlab.tiny.wordnet import DEFAULT_DIR, read_synsets

FMLAB_LICENCE = "MIT (fmlab's own generated text)"
WORDNET_LICENCE = "WordNet 3.0 licence (Princeton University): use, copying and distribution for any purpose"
WORDNET_NOTICE = (
    "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE "
    'IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR '
    "IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR "
    "WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED "
    "SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS "
    "OR OTHER RIGHTS. The name of Princeton University or Princeton may not be used in advertising or "
    "publicity pertaining to distribution of the software and/or database. Title to copyright in this "
    "software, database and any associated documentation shall at all times remain with Princeton "
    "University and LICENSEE agrees to preserve same."
)


@dataclass(frozen=True)
class Source:
    name: str
    chat: bool  # documents are message lists rendered with the chat template, else plain text
    origin: str
    licence: str


SOURCES = {
    s.name: s
    for s in (
        Source("synthetic-chats", True, "fmlab.tiny.corpus.chat_samples", FMLAB_LICENCE),
        Source("synthetic-text", False, "fmlab.tiny.corpus.plain_texts", FMLAB_LICENCE),
        Source("json-drills", True, "fmlab.tiny.corpus.json_chats", FMLAB_LICENCE),
        Source("wordnet-text", False, "fmlab.tiny.real_text.pretraining_texts", WORDNET_LICENCE),
        Source("wordnet-chats", True, "fmlab.tiny.real_text.definition_chats", WORDNET_LICENCE),
    )
}


def wordnet_package() -> str:
    """The installed Debian package that provided WordNet, e.g. "wordnet-base 1:3.0-37"."""
    if shutil.which("dpkg-query"):
        run = subprocess.run(["dpkg-query", "-W", "wordnet-base"], capture_output=True, text=True)
        if run.returncode == 0 and run.stdout.strip():
            return " ".join(run.stdout.split())
    return "wordnet-base (version unknown)"


def _wordnet(recipe, wordnet_dir):
    """WordNet's synsets and the real-text task's held-out synsets, or a clear error when it is missing."""
    if not (Path(wordnet_dir) / "data.noun").is_file():
        raise FmlabError(
            f"{wordnet_dir}: WordNet 3.0 not found (data.noun); install it with `apt-get install "
            "wordnet-base` or set WORDNET_DIR, or build without it (Recipe(wordnet_text=0, wordnet_chats=0))"
        )
    return read_synsets(wordnet_dir), held_out_keys(wordnet_dir, recipe.seed)


def documents(recipe, wordnet_dir: str | Path = DEFAULT_DIR) -> dict[str, list]:
    """Each source's documents for `recipe` (a `fmlab.tiny.build.Recipe`), in a fixed order."""
    docs = {
        "synthetic-chats": chat_samples(recipe.chat_samples, recipe.seed),
        "synthetic-text": plain_texts(recipe.plain_texts, recipe.seed),
        "json-drills": json_chats(recipe.json_chats, recipe.seed),
    }
    if recipe.wordnet_text or recipe.wordnet_chats:
        synsets, exclude = _wordnet(recipe, wordnet_dir)
        texts = pretraining_texts(synsets, recipe.seed, exclude)
        docs["wordnet-text"] = texts[: round(len(texts) * recipe.wordnet_text)]
        chats = definition_chats(synsets, recipe.seed, exclude)
        docs["wordnet-chats"] = chats[: round(len(chats) * recipe.wordnet_chats)]
    return docs


def reading_documents(recipe, docs: dict[str, list], wordnet_dir: str | Path = DEFAULT_DIR) -> dict[str, list]:
    """The base's reading pass (`Recipe.reading_epochs`) after the first pass over `docs` (`documents`):
    WordNet's paragraphs again (a `reading_text` share of them, their entries grouped anew with the next
    seed), the next `wordnet_chats` slice of definition chats (words the first pass did not ask about),
    and a rehearsal of the synthetic sources: the first `reading_chats` chats and every plain text and
    JSON drill of `docs`. Without the rehearsal the base forgets what the pass leaves out
    (docs/real-text.md: JSON drills 0.33 -> 3.79 nats per token)."""
    synsets, exclude = _wordnet(recipe, wordnet_dir)
    texts = pretraining_texts(synsets, recipe.seed + 1, exclude)
    chats = definition_chats(synsets, recipe.seed, exclude)
    first = round(len(chats) * recipe.wordnet_chats)
    return {
        "wordnet-text": texts[: round(len(texts) * recipe.reading_text)],
        "wordnet-chats": chats[first : 2 * first],
        "synthetic-chats": docs["synthetic-chats"][: recipe.reading_chats],
        "synthetic-text": docs["synthetic-text"],
        "json-drills": docs["json-drills"],
    }


def render(source: str, document) -> str:
    return render_text(document) if SOURCES[source].chat else document


def mix_tokenizer_texts(recipe, docs: dict[str, list]) -> Iterator[str]:
    """The tokenizer's training text: the synthetic corpus and the play split as before
    (`corpus.tokenizer_texts`), every JSON drill, and a fixed sample of each WordNet source."""
    yield from tokenizer_texts(recipe.seed)
    yield from (render("json-drills", d) for d in docs["json-drills"])
    rng = random.Random(f"fmlab.mix.tokenizer:{recipe.seed}")
    for name in ("wordnet-text", "wordnet-chats"):
        part = docs.get(name, [])
        yield from (render(name, d) for d in rng.sample(part, min(len(part), recipe.tokenizer_wordnet_docs)))


def source_report(
    tokens: dict[str, int], wordnet_dir: str | Path = DEFAULT_DIR, reading: dict[str, int] | None = None
) -> list[dict]:
    """The manifest's `sources`: each source with its origin, licence, training tokens (of both passes,
    with the reading pass's own count when there is one) and share of all of them."""
    reading = reading or {}
    total = sum(tokens.values()) + sum(reading.values()) or 1
    out = []
    for name, first in tokens.items():
        s, n = SOURCES[name], first + reading.get(name, 0)
        entry = {"name": name, "origin": s.origin, "licence": s.licence, "tokens": n, "share": round(n / total, 4)}
        if reading:
            entry["reading_tokens"] = reading.get(name, 0)
        if s.licence == WORDNET_LICENCE:
            entry |= {"package": wordnet_package(), "path": str(wordnet_dir), "notice": WORDNET_NOTICE}
        out.append(entry)
    return out
