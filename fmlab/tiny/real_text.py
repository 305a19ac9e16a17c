"""Real, human-written English for the embedded default, from Princeton WordNet 3.0 (`fmlab.tiny.wordnet`).

1. `pretraining_texts`: WordNet's definitions and example sentences rendered as plain English
   paragraphs ("A dog is a member of the genus Canis ... For example: the dog barked all night."), to
   mix with the synthetic corpus of `fmlab.tiny.corpus` when the base is rebuilt (`docs/real-text.md`).
2. The real-text task: which semantic domain (WordNet's noun lexicographer file) a word belongs to,
   given its definition and sometimes an example; the assistant turn is the domain's label:

    user:      What is the domain of "jam", meaning "preserve of crushed fruit"? Answer with one of:
               event, plant, possession, action, person, food, ... (all 16 labels, shuffled)
    assistant: food

The words are everyday ones: only synsets whose senses were tagged in WordNet's semantic concordance
(`cntlist.rev`) are used. Labels are balanced; the splits are disjoint by synset and by every word of
the synsets (no test word is a word of a train synset). Deterministic for a seed and the same WordNet.

`python -m fmlab.tiny.real_text [--wordnet /usr/share/wordnet] [--out data] [--seed 0]` writes
`wordnet_train.jsonl`, `wordnet_valid.jsonl` and `wordnet_test.jsonl` (see `data/README.md`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from fmlab.errors import FmlabError
from fmlab.files import atomic_write
from fmlab.tiny.wordnet import DEFAULT_DIR, Synset, read_sense_counts, read_synsets, synset_count

# WordNet's noun lexicographer files -> readable labels: the 16 domains a reader can tell apart from a
# definition alone. Left out: the abstract, overlapping ones (attribute, cognition, quantity, state,
# relation, process, phenomenon) and those with under 100 usable synsets (Tops, motive, shape); see
# docs/real-text.md.
LABELS = {
    "noun.act": "action",
    "noun.animal": "animal",
    "noun.artifact": "artifact",
    "noun.body": "body",
    "noun.communication": "communication",
    "noun.event": "event",
    "noun.feeling": "feeling",
    "noun.food": "food",
    "noun.group": "group",
    "noun.location": "place",
    "noun.object": "natural object",
    "noun.person": "person",
    "noun.plant": "plant",
    "noun.possession": "possession",
    "noun.substance": "substance",
    "noun.time": "time",
}
SPLITS = {"test": 300, "valid": 150, "train": 1500}  # drawn in this order; written as train, valid, test
FILE_NAMES = {name: f"wordnet_{name}.jsonl" for name in ("train", "valid", "test")}
MAX_DEFINITION_WORDS = 30
SYSTEM_FRACTION = 0.3
EXAMPLE_FRACTION = 0.5  # of the samples whose synset has an example sentence

QUESTIONS = [
    'What is the domain of "{word}", meaning "{definition}"? Answer with one of: {labels}.',
    "Word: {word}\nDefinition: {definition}\n{example_line}Which domain does the word belong to: {labels}?",
    'Classify the word "{word}" ({definition}) into one of these domains: {labels}.',
    "{Definition}.\n{example_line}Which domain is this: {labels}? Answer with the domain only.",
    "Definition: {definition}\n{example_line}Pick the domain of this meaning from: {labels}.",
    'The word "{word}" means {definition}. {example_sentence}Is it {labels_or}?',
]
SYSTEM_PROMPTS = [
    "You sort words into semantic domains.",
    "Answer with the label only.",
    "You are a helpful assistant.",
]
_WORD_RE = re.compile(r"[a-z][a-z '-]*[a-z]")


def _headword(synset: Synset, counts: dict[str, int]) -> str | None:
    """The synset's most-tagged lower-case word, or None when no word of it was ever tagged."""
    best, best_count = None, 0
    for i, lemma in enumerate(synset.lemmas):
        count = counts.get(synset.sense_key(i), 0)
        if count > best_count and _WORD_RE.fullmatch(lemma):
            best, best_count = lemma, count
    return best


def task_candidates(synsets: list[Synset], counts: dict[str, int]) -> dict[str, list[tuple[Synset, str]]]:
    """Per label, the usable (synset, headword) pairs in file order: a tagged, lower-case headword and a
    definition of 2-30 words that does not contain the headword."""
    out = {label: [] for label in LABELS.values()}
    for s in synsets:
        label = LABELS.get(s.lexname)
        if label is None or s.pos != "noun":
            continue
        word = _headword(s, counts)
        n_words = len(s.definition.split())
        if word and 2 <= n_words <= MAX_DEFINITION_WORDS and word not in s.definition.lower():
            out[label].append((s, word))
    return out


def _lemma_set(synset: Synset) -> set[str]:
    return {lemma.lower() for lemma in synset.lemmas}


def split_items(synsets: list[Synset], counts: dict[str, int], seed: int = 0, sizes=None) -> dict[str, list[tuple]]:
    """(synset, headword, label) per split: labels balanced (round-robin over shuffled labels), every
    synset in one split at most, and no word shared by synsets of two splits. `sizes` maps split names
    to sample counts, in the order they are drawn (default SPLITS)."""
    sizes = sizes or SPLITS
    candidates = task_candidates(synsets, counts)
    rng = random.Random(f"fmlab.wordnet:{seed}:split")
    pools = {label: rng.sample(items, len(items)) for label, items in sorted(candidates.items())}
    words_of: dict[str, set[str]] = {name: set() for name in sizes}
    out: dict[str, list[tuple]] = {name: [] for name in sizes}
    for name, size in sizes.items():
        others = set().union(*(words for other, words in words_of.items() if other != name))
        labels = sorted(pools)
        for i in range(size):
            if i % len(labels) == 0:
                rng.shuffle(labels)
            label = labels[i % len(labels)]
            while True:
                if not pools[label]:
                    raise FmlabError(f"WordNet has too few usable synsets for the label {label!r} ({name} split)")
                synset, word = pools[label].pop()
                if not _lemma_set(synset) & others:
                    break
            words_of[name] |= _lemma_set(synset)
            out[name].append((synset, word, label))
        rng.shuffle(out[name])
    return out


def _labels_text(rng: random.Random, final: str = ", ") -> str:
    order = rng.sample(list(LABELS.values()), len(LABELS))  # shuffled: no label owes its answer to its place
    return ", ".join(order[:-1]) + final + order[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def render_sample(synset: Synset, word: str, label: str, rng: random.Random) -> list[dict]:
    """One chat sample in Apple's message format: optional system turn, the question, the label."""
    example = rng.choice(synset.examples) if synset.examples and rng.random() < EXAMPLE_FRACTION else None
    question = rng.choice(QUESTIONS).format(
        word=word,
        definition=synset.definition,
        Definition=synset.definition[0].upper() + synset.definition[1:],
        example_line=f"Example: {example}\n" if example else "",
        example_sentence=f'For example: "{example}". ' if example else "",
        labels=_labels_text(rng),
        labels_or=_labels_text(rng, " or "),
    )
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < SYSTEM_FRACTION else []
    return system + [{"role": "user", "content": question}, {"role": "assistant", "content": label}]


def samples_from_items(items: dict[str, list[tuple]], seed: int = 0) -> dict[str, list[list[dict]]]:
    """The chat samples of each split of `split_items`, in FILE_NAMES order (train, valid, test)."""
    out = {}
    for name in FILE_NAMES:
        rng = random.Random(f"fmlab.wordnet:{seed}:{name}")  # wording apart from the choice of synsets
        out[name] = [render_sample(s, word, label, rng) for s, word, label in items[name]]
    return out


def wordnet_items(root=DEFAULT_DIR, seed: int = 0) -> dict[str, list[tuple]]:
    """`split_items` of the noun synsets of the WordNet files in `root`."""
    return split_items(read_synsets(root, ("noun",)), read_sense_counts(root), seed)


def jsonl_text(samples: list[list[dict]]) -> str:
    return "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)


def make_splits(out="data", root=DEFAULT_DIR, seed: int = 0) -> dict[str, Path]:
    """Write the three split files to `out` (atomically) and return their paths."""
    paths = {}
    for name, samples in samples_from_items(wordnet_items(root, seed), seed).items():
        paths[name] = Path(out) / FILE_NAMES[name]
        with atomic_write(paths[name], "w") as f:
            f.write(jsonl_text(samples))
    return paths


def domain_counts(synsets: list[Synset], counts: dict[str, int] | None = None) -> Counter:
    """Synsets per lexicographer file (only the tagged ones when `counts` is given)."""
    return Counter(s.lexname for s in synsets if counts is None or synset_count(s, counts) > 0)


# --- pretraining text ------------------------------------------------------------------------------


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def render_entry(synset: Synset, rng: random.Random) -> str:
    """One synset as plain sentences: the word and its definition, sometimes its synonyms, its examples."""
    word, definition = synset.lemmas[0], synset.definition
    if not definition:
        head = ""
    elif synset.pos == "verb":
        head = f"To {word} is to {definition}."
    elif synset.pos == "noun" and definition.split()[0] in ("a", "an", "the", "any", "one", "someone"):
        head = f"{_sentence(_article(word) if word.islower() else word)[:-1]} is {definition}."
    else:
        head = f'"{word}" means {definition}.'
    parts = [_sentence(head)] if head else []
    if len(synset.lemmas) > 1 and rng.random() < 0.5:
        parts.append(f"Other words for it: {', '.join(synset.lemmas[1:])}.")
    if synset.examples:
        lead = rng.choice(("For example: ", "", "As in: "))
        parts.append(lead + " ".join(_sentence(e) for e in synset.examples))
    return " ".join(parts)


def pretraining_texts(synsets: list[Synset], seed: int = 0, exclude=frozenset(), per_text=(1, 6)) -> list[str]:
    """Paragraphs of 1-6 shuffled synset entries, every synset once except those whose offset and pos
    are in `exclude` (the task's valid and test synsets, so that the base never read them)."""
    rng = random.Random(f"fmlab.wordnet:{seed}:text")
    kept = [s for s in synsets if (s.pos, s.offset) not in exclude]
    order = rng.sample(kept, len(kept))
    out, i = [], 0
    while i < len(order):
        n = rng.randint(*per_text)
        out.append(" ".join(render_entry(s, rng) for s in order[i : i + n]))
        i += n
    return out


DEFINITION_QUESTIONS = ["What does {q} mean?", "Define {q}.", "What is the meaning of {q}?", "Explain the word {q}."]
EXAMPLE_QUESTIONS = ["Use {q} in a sentence.", "Give me an example sentence with {q}."]


def definition_chats(synsets: list[Synset], seed: int = 0, exclude=frozenset()) -> list[list[dict]]:
    """Chats in Apple's message format that ask what a word means (or for a sentence with it) and answer
    from WordNet: real words in the chat template, never their domain (so the task stays unseen)."""
    rng, out = random.Random(f"fmlab.wordnet:{seed}:chats"), []
    for s in synsets:
        if (s.pos, s.offset) in exclude or not s.definition:
            continue
        q = f'"{s.lemmas[0]}"'
        if s.examples and rng.random() < 0.3:
            user, reply = rng.choice(EXAMPLE_QUESTIONS).format(q=q), _sentence(rng.choice(s.examples))
        else:
            user, reply = rng.choice(DEFINITION_QUESTIONS).format(q=q), render_entry(s, rng)
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": reply}])
    return rng.sample(out, len(out))


def held_out_keys(root=DEFAULT_DIR, seed: int = 0) -> frozenset:
    """(pos, offset) of the task's valid and test synsets: what `pretraining_texts` should exclude."""
    items = wordnet_items(root, seed)
    return frozenset((s.pos, s.offset) for name in ("valid", "test") for s, _, _ in items[name])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fmlab.tiny.real_text", description="write the WordNet task splits")
    ap.add_argument("--wordnet", default=str(DEFAULT_DIR), help="folder with data.noun and cntlist.rev")
    ap.add_argument("--out", default="data", help="folder for wordnet_{train,valid,test}.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name, path in make_splits(args.out, args.wordnet, args.seed).items():
        print(f"{name}: {sum(1 for _ in open(path, encoding='utf-8'))} samples -> {path}")


if __name__ == "__main__":
    main()
