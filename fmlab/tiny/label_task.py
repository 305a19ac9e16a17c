"""The second example dataset: a labelled task. Each sample is a two-sentence story about one of the
play set's characters (`fmlab.tiny.play_text`) and the question how that character feels; the answer is
one word of four labels: happy, sad, scared or angry. It exercises `fmlab eval --metric label` (accuracy,
per-label precision / recall / F1, confusion matrix) end to end, as the play set exercises free text.

    user:      How does the fox feel? Answer with one word: sad, happy, angry or scared.
               The fox lost their red ball in a forest. The fox cried a little.
    assistant: sad

The label follows from the event (and the reaction, when there is one); the base `fmlab-tiny` never saw
the question, so it answers with prose and an adapter has to teach the one-word answer. Every story (its
character, place, event and reaction) is unique across the splits, so no test story is a training story.

`python -m fmlab.tiny.label_task [--out data] [--seed 0]` writes `labels_train.jsonl`, `labels_valid.jsonl`
and `labels_test.jsonl` (see `data/README.md`).
"""

from __future__ import annotations

import random
from pathlib import Path

from fmlab.tiny.play_text import CHARACTERS, SETTINGS
from fmlab.tiny.splits import splits_main, write_splits
from fmlab.tiny.stories import at_place

LABELS = ("happy", "sad", "scared", "angry")
SPLITS = {"train": 800, "valid": 100, "test": 200}
REACTION_FRACTION = 0.6  # the rest tell the event alone: the label has to come from what happened
SYSTEM_FRACTION = 0.5

EVENTS = {
    "happy": [
        "found a shiny key",
        "won the big race",
        "got a warm hug from a friend",
        "saw a bright rainbow",
        "had a party with all their friends",
        "got a new red kite",
        "baked a perfect cake",
        "heard a very funny joke",
    ],
    "sad": [
        "lost their red ball",
        "had to say goodbye to a best friend",
        "dropped their ice cream",
        "saw the rain wash their sandcastle away",
        "missed the big party",
        "broke their favourite cup",
        "found their little plant dead",
        "was left out of the game",
    ],
    "scared": [
        "heard a strange noise in the dark",
        "saw a huge shadow on the wall",
        "was all alone when the lights went out",
        "heard loud thunder",
        "got lost in the thick fog",
        "saw a big hairy spider",
        "heard a door creak at night",
        "was chased by a wild storm",
    ],
    "angry": [
        "had their lunch taken",
        "was pushed in the line",
        "saw someone knock their tower over on purpose",
        "was not allowed to play",
        "heard someone laugh at their drawing",
        "had their toy grabbed away",
        "was blamed for something they did not do",
        "found their snack eaten by someone else",
    ],
}
REACTIONS = {
    "happy": ["smiled all day", "clapped and danced", "sang a happy song", "laughed with joy"],
    "sad": ["cried a little", "sat down quietly and sighed", "had tears in their eyes", "did not want to play"],
    "scared": ["hid under a blanket", "was shaking all over", "ran to hide", "held their breath"],
    "angry": ["stamped their feet", "shouted that it was not fair", "frowned and crossed their arms", "went red"],
}
QUESTIONS = [
    "How does the {who} feel? Answer with one word: {labels}.\n{story}",
    "{story}\nHow does the {who} feel: {labels}? Answer with one word.",
    "Read the story and say how the {who} feels ({labels}).\n{story}",
    "Story: {story}\nIs the {who} {labels}?",
    "{story}\nWhich word fits the {who} best: {labels}?",
    "Label the feeling of the {who} as {labels}.\n{story}",
]
SYSTEM_PROMPTS = [
    "You label how characters in short stories feel.",
    "Answer with a single word.",
    "You are a helpful assistant.",
]


def _story(who: str, place: str, event: str, reaction: str | None) -> str:
    text = f"The {who} {event} {at_place(place)}."
    return text + (f" The {who} {reaction}." if reaction else "")


def _items(n: int, seed: int) -> list[tuple[str, str, str, str, str | None]]:
    """`n` distinct (label, who, place, event, reaction) tuples; labels drawn uniformly."""
    rng, seen, out = random.Random(f"fmlab.labels:{seed}:items"), set(), []
    while len(out) < n:
        label = rng.choice(LABELS)
        item = (
            label,
            rng.choice(CHARACTERS),
            rng.choice(SETTINGS),
            rng.choice(EVENTS[label]),
            rng.choice(REACTIONS[label]) if rng.random() < REACTION_FRACTION else None,
        )
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _labels_text(rng: random.Random) -> str:
    order = rng.sample(LABELS, len(LABELS))  # shuffled, so no label owes its answer to its position
    return ", ".join(order[:-1]) + " or " + order[-1]


def _sample(item, rng: random.Random) -> list[dict]:
    label, who, place, event, reaction = item
    question = rng.choice(QUESTIONS).format(
        who=who, labels=_labels_text(rng), story=_story(who, place, event, reaction)
    )
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < SYSTEM_FRACTION else []
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": label}]


def split_samples(seed: int = 0) -> dict[str, list[list[dict]]]:
    """The chat samples of each split (train, valid, test); no story appears in two splits."""
    items, out, start = _items(sum(SPLITS.values()), seed), {}, 0
    for name, size in SPLITS.items():
        rng = random.Random(f"fmlab.labels:{seed}:{name}")  # wording apart from the stories
        out[name], start = [_sample(item, rng) for item in items[start : start + size]], start + size
    return out


def make_splits(out: str | Path = "data", seed: int = 0) -> dict[str, Path]:
    """Write `labels_train.jsonl`, `labels_valid.jsonl`, `labels_test.jsonl` to `out`."""
    return write_splits(out, split_samples(seed), "labels_{name}.jsonl")


def main(argv: list[str] | None = None) -> None:
    splits_main("python -m fmlab.tiny.label_task", "write the labelled splits", make_splits, argv)


if __name__ == "__main__":
    main()
