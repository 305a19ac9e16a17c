"""How the toy plays and the requests for them are written: the characters (with traits), the settings
(with their preposition and what is found there), the request wordings and the dialogue templates.

A play follows a tiny story arc so it reads like a story and not like shuffled lines: the first scene
states a problem (a lost hat, a party, a strange noise, ...), a middle scene works on it and the last
scene solves it; a one-scene play does both in three or four lines. Extra lines mix in the speaker's
traits and the setting so the text varies while staying simple enough for a tiny model to learn.
`fmlab.tiny.plays` builds the dataset and the metric on top of this module.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PlayRequest:
    characters: tuple[str, ...]  # lower case, in the order the request names them
    setting: str
    scenes: int


@dataclass(frozen=True)
class Character:
    adjective: str  # "I am a big dragon."
    likes: str  # "I love shiny gold!"
    can: str  # first person: "I can breathe tiny sparks."


@dataclass(frozen=True)
class Setting:
    preposition: str  # "on" a beach, "in" a bakery, "at" a school
    things: str  # plural things found there, "the sand castles"


# One word each: cast names are single upper-case words, which keeps `NAME: line` unambiguous.
CHARACTER_TRAITS = {
    "dragon": Character("big", "shiny gold", "breathe tiny sparks"),
    "baker": Character("busy", "fresh bread", "bake a giant cake"),
    "robot": Character("clever", "shiny bolts", "count very fast"),
    "cat": Character("soft", "warm milk", "climb very high"),
    "pirate": Character("loud", "treasure maps", "sail a big ship"),
    "owl": Character("wise", "quiet nights", "see in the dark"),
    "wizard": Character("old", "magic books", "make little sparkles"),
    "princess": Character("kind", "pretty flowers", "sing a sweet song"),
    "knight": Character("brave", "shiny armour", "ride a fast horse"),
    "fox": Character("quick", "juicy berries", "run very fast"),
    "rabbit": Character("fluffy", "crunchy carrots", "hop very far"),
    "bear": Character("sleepy", "sweet honey", "climb tall trees"),
    "mouse": Character("tiny", "yellow cheese", "squeeze through small holes"),
    "giant": Character("tall", "big sandwiches", "reach the clouds"),
    "fairy": Character("little", "morning dew", "fly on the wind"),
    "unicorn": Character("magical", "rainbows", "gallop very fast"),
    "frog": Character("green", "rainy days", "jump very high"),
    "penguin": Character("chilly", "cold fish", "slide on my belly"),
    "lion": Character("proud", "sunny rocks", "roar very loudly"),
    "monkey": Character("cheeky", "ripe bananas", "swing from branches"),
    "astronaut": Character("brave", "the stars", "float in space"),
    "dog": Character("happy", "long walks", "dig deep holes"),
    "elephant": Character("gentle", "peanuts", "spray water with my trunk"),
    "ghost": Character("shy", "spooky songs", "float through walls"),
    "king": Character("grand", "golden crowns", "give a long speech"),
    "queen": Character("wise", "tea parties", "wave very nicely"),
    "turtle": Character("slow", "quiet ponds", "hide in my shell"),
    "squirrel": Character("busy", "crunchy nuts", "jump from tree to tree"),
    "witch": Character("clever", "bubbling potions", "fly on a broom"),
    "chef": Character("cheerful", "hot soup", "cook a tasty stew"),
    "farmer": Character("hardworking", "fresh eggs", "grow big pumpkins"),
    "teacher": Character("patient", "good books", "answer every question"),
    "dinosaur": Character("huge", "green leaves", "stomp very loudly"),
    "goat": Character("hungry", "crunchy apples", "climb steep rocks"),
    "duck": Character("chatty", "puddles", "swim in circles"),
    "tiger": Character("stripy", "long naps", "pounce very quietly"),
    "panda": Character("cuddly", "fresh bamboo", "roll down hills"),
    "snail": Character("slow", "wet leaves", "carry my house on my back"),
    "bee": Character("buzzy", "sweet flowers", "make golden honey"),
    "whale": Character("enormous", "deep water", "sing under the sea"),
}
SETTING_TRAITS = {
    "bakery": Setting("in", "warm ovens"),
    "beach": Setting("on", "sand castles"),
    "library": Setting("in", "tall shelves"),
    "castle": Setting("in", "high towers"),
    "forest": Setting("in", "tall trees"),
    "school": Setting("at", "little desks"),
    "garden": Setting("in", "bright flowers"),
    "kitchen": Setting("in", "pots and pans"),
    "farm": Setting("on", "hay bales"),
    "zoo": Setting("at", "animal houses"),
    "park": Setting("in", "green benches"),
    "spaceship": Setting("on", "blinking buttons"),
    "cave": Setting("in", "dark corners"),
    "river": Setting("by", "smooth stones"),
    "mountain": Setting("on", "snowy rocks"),
    "market": Setting("at", "fruit stalls"),
    "museum": Setting("in", "old statues"),
    "train station": Setting("at", "busy platforms"),
    "island": Setting("on", "palm trees"),
    "playground": Setting("at", "swings and slides"),
    "pond": Setting("by", "lily pads"),
    "desert": Setting("in", "sand dunes"),
    "meadow": Setting("in", "wild flowers"),
    "lighthouse": Setting("in", "winding stairs"),
    "treehouse": Setting("in", "rope ladders"),
    "toy shop": Setting("in", "wooden toys"),
    "village": Setting("in", "little houses"),
    "circus": Setting("at", "striped tents"),
    "swamp": Setting("in", "muddy puddles"),
    "snowy hill": Setting("on", "snowmen"),
}
CHARACTERS = list(CHARACTER_TRAITS)
SETTINGS = list(SETTING_TRAITS)
SCENE_WORDS = {1: "one", 2: "two", 3: "three"}

SYSTEM_PROMPTS = [
    "You are a playwright who writes short plays for children.",
    "You write short, cheerful plays for kids.",
    "You are a helpful assistant that writes children's plays in a strict script format.",
    "You write tiny plays for a school drama club.",
]
# Slots: {chars} "a dragon and a baker", {at_a_place} "on a beach", {a_place} "a beach",
# {n} 2, {n_word} "two", {N_word} "Two", {s} plural "s" of "scene".
REQUESTS = [
    "Write a {n_word}-scene play about {chars} {at_a_place}.",
    "Can you write a play for kids with {chars}, set {at_a_place}? {N_word} scene{s} please.",
    "I need a {n_word}-scene play: characters are {chars}; setting: {a_place}.",
    "Please write a short children's play with {n} scene{s}. Characters: {chars}. Setting: {a_place}.",
    "Write a kids' play set {at_a_place} starring {chars}, in {n_word} scene{s}.",
    "Make a play for children about {chars}. It happens {at_a_place} and has {n} scene{s}.",
    "Could you write me a {n}-scene play? It should star {chars} and take place {at_a_place}.",
    "A play for my class, please: {n_word} scene{s}, {chars}, {at_a_place}.",
    "Write a short play where {chars} meet {at_a_place}. Make it {n_word} scene{s} long.",
    "Play request. Characters: {chars}. Place: {a_place}. Scenes: {n}.",
]

# Each arc: a title, and (first, second) line pairs for the start, middle and end scenes. The start pair
# is spoken by (hero, helper), the middle by (helper, hero), the end by (finder, hero); the finder is the
# third character when there is one, so everyone in the cast gets to speak.
# Slots: {hero} {helper} {finder} (names as addressed, "Dragon"), {place} "beach", {at_place} "on the
# beach", {things} "sand castles", {item}, {helper_likes}, {hero_likes}.
ARCS = {
    "lost": {
        "title": "The Lost {Item}",
        "start": ("Oh no! I lost my {item} {at_place}.", "Do not worry, {hero}. We will find it together."),
        "middle": ("Is your {item} near the {things}?", "No, it is not there. Let us keep looking."),
        "end": (
            "Look, {hero}! Your {item} was behind the {things}!",
            "Hooray! Thank you, {finder}. You are a good friend.",
        ),
    },
    "party": {
        "title": "A Party {At_place}",
        "start": ("Let us have a party {at_place}!", "What a fun idea, {hero}! I will bring {helper_likes}."),
        "middle": ("We need some music for the party.", "I will sing, and you can clap along!"),
        "end": ("Everyone is here. The party can start!", "This is the best party ever, {finder}!"),
    },
    "noise": {
        "title": "The Strange Noise",
        "start": ("Listen, {helper}! Did you hear that noise?", "Yes! I think it came from the {things}."),
        "middle": ("I am a little bit scared.", "Hold my hand, {helper}. Let us be brave together."),
        "end": ("Look! It was only a tiny bird singing.", "What a silly surprise! Thank you, {finder}."),
    },
    "picnic": {
        "title": "The Picnic",
        "start": ("My tummy is rumbling, {helper}. I am so hungry!", "Let us have a picnic {at_place}."),
        "middle": ("I found some {helper_likes} for our picnic.", "And I brought {hero_likes}. Yum!"),
        "end": ("The picnic is ready. Come and eat, {hero}!", "Sharing food with friends is the best."),
    },
    "friend": {
        "title": "A New Friend",
        "start": ("Hello! I am new here. Will you be my friend?", "Of course, {hero}! Welcome to the {place}."),
        "middle": ("Come with me. I will show you the {things}.", "Wow! This {place} is wonderful."),
        "end": ("Will you come back tomorrow, {hero}?", "Yes! I love my new friends. Thank you, {finder}."),
    },
    "race": {
        "title": "The Great Race",
        "start": ("{helper}, let us have a race {at_place}!", "Yes! The first one to the {things} wins."),
        "middle": ("Ready, steady, go!", "I am running as fast as I can!"),
        "end": ("It is a tie! You both won, {hero}.", "Racing is more fun with friends, {finder}."),
    },
}
ITEMS = ["hat", "red ball", "kite", "lunch box", "golden key", "blue scarf", "little drum", "map", "umbrella"]

# Stage directions per scene role. Slots: {hero} {helper} {finder} (lower case), {place}, {at_place}, {things}.
DIRECTIONS = {
    "start": [
        "(The {hero} is playing {at_place}.)",
        "(Morning {at_place}. The {hero} looks around.)",
        "(The {hero} and the {helper} meet {at_place}.)",
        "(The {hero} walks past the {things}.)",
    ],
    "middle": [
        "(Later, the friends look around the {things}.)",
        "(It is noon {at_place}.)",
        "(The {helper} waves to the {hero}.)",
        "(The friends walk across the {place}.)",
    ],
    "end": [
        "(The sun is setting {at_place}.)",
        "(The {finder} comes running.)",
        "(Everyone gathers by the {things}.)",
        "(Evening {at_place}. The friends smile.)",
    ],
}
# Extra lines from the speaker's traits and the setting. Slots: {a_adjective} {me} {likes} {can} of the speaker,
# {other} (the previous speaker, addressed), {place}, {things}.
TRAIT_LINES = [
    "I love {likes}!",
    "I can {can}. Watch me!",
    "Did you know I can {can}, {other}?",
    "I am {a_adjective} {me}, and I can help.",
    "Look at all the {things}!",
    "This {place} is my favourite place.",
    "{other}, do you like {likes}? I do!",
    "Wait for me, {other}!",
]


def article(word: str) -> str:
    vowel_sound = word[0] in "aeiou" and not word.startswith(("uni", "use"))  # "a unicorn"
    return ("an " if vowel_sound else "a ") + word


def join_names(characters: tuple[str, ...]) -> str:
    """("dragon", "owl", "cat") -> "a dragon, an owl and a cat"."""
    names = [article(c) for c in characters]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def request_text(req: PlayRequest, rng: random.Random) -> str:
    n, place = req.scenes, req.setting
    return rng.choice(REQUESTS).format(
        chars=join_names(req.characters),
        a_place=article(place),
        at_a_place=f"{SETTING_TRAITS[place].preposition} {article(place)}",
        n=n,
        n_word=SCENE_WORDS[n],
        N_word=SCENE_WORDS[n].capitalize(),
        s="" if n == 1 else "s",
    )


def _title(req: PlayRequest, arc: dict, slots: dict, rng: random.Random) -> str:
    if rng.random() < 0.5:  # named after the characters: "The Dragon, the Owl and the Baker"
        names = ["the " + c.title() for c in req.characters]
        title = ", ".join(names[:-1]) + " and " + names[-1]
        return title[0].upper() + title[1:]
    place = SETTING_TRAITS[req.setting].preposition + " the " + req.setting.title()
    return arc["title"].format(Item=slots["item"].title(), At_place=place)


def _scene_roles(scenes: int) -> list[list[str]]:
    """The arc parts each scene plays: a one-scene play does the whole arc."""
    return {1: [["start", "end"]], 2: [["start"], ["end"]], 3: [["start"], ["middle"], ["end"]]}[scenes]


def play_text(req: PlayRequest, rng: random.Random) -> str:
    """The reference play for `req` in the strict format (see `fmlab.tiny.plays`)."""
    cast = list(req.characters)
    hero, helper = rng.sample(cast, 2)
    finder = next((c for c in cast if c not in (hero, helper)), helper)
    names = {"hero": hero, "helper": helper, "finder": finder}
    speakers = {"start": (hero, helper), "middle": (helper, hero), "end": (finder, hero)}
    arc = ARCS[rng.choice(list(ARCS))]
    place = req.setting
    slots = {
        "place": place,
        "at_place": f"{SETTING_TRAITS[place].preposition} the {place}",
        "things": SETTING_TRAITS[place].things,
        "item": rng.choice(ITEMS),
        "hero_likes": CHARACTER_TRAITS[hero].likes,
        "helper_likes": CHARACTER_TRAITS[helper].likes,
    }
    addressed = slots | {role: name.title() for role, name in names.items()}
    lines = [
        f"TITLE: {_title(req, arc, slots, rng)}",
        "CAST: " + ", ".join(c.upper() for c in cast),
        f"SETTING: {article(place)}",
    ]
    for number, roles in enumerate(_scene_roles(req.scenes), start=1):
        lines.append(f"SCENE {number}")
        lines.append(rng.choice(DIRECTIONS[roles[0]]).format(**slots | names))
        dialogue = [(who, text.format(**addressed)) for role in roles for who, text in zip(speakers[role], arc[role])]
        if len(roles) == 2 and finder == helper:  # one scene, two characters: the helper would speak
            del dialogue[2]  # twice in a row, so the hero closes right away
        if len(roles) == 1:
            # fewer extras in three-scene plays keeps the longest replies near 150 words (~250 tokens)
            extras = rng.randint(0, 2 if req.scenes == 2 else 1)
            dialogue = _add_trait_lines(rng, dialogue, extras, cast, place, at_start=roles[0] == "end")
        lines += [f"{who.upper()}: {text}" for who, text in _address_others(dialogue, cast)]
    lines.append("THE END")
    return "\n".join(lines)


def _add_trait_lines(
    rng: random.Random, dialogue: list[tuple[str, str]], count: int, cast: list[str], place: str, at_start: bool
) -> list[tuple[str, str]]:
    """`count` trait lines after the scene's pair, or before it when the pair closes the play; the same
    character never speaks twice in a row."""
    extra, previous = [], dialogue[0][0] if at_start else dialogue[-1][0]
    for _ in range(count):
        me = rng.choice([c for c in cast if c != previous])
        traits = CHARACTER_TRAITS[me]
        text = rng.choice(TRAIT_LINES).format(
            me=me,
            a_adjective=article(traits.adjective),
            likes=traits.likes,
            can=traits.can,
            place=place,
            things=SETTING_TRAITS[place].things,
            other="{other}",
        )  # the previous speaker, known only later
        extra.append((me, text))
        previous = me
    return extra[::-1] + dialogue if at_start else dialogue + extra


def _address_others(dialogue: list[tuple[str, str]], cast: list[str]) -> list[tuple[str, str]]:
    """Fill `{other}` with the previous speaker (or the next other cast member) so nobody talks to themself."""
    out = []
    for i, (who, text) in enumerate(dialogue):
        before = [w for w, _ in dialogue[:i] if w != who]
        other = before[-1] if before else next(c for c in cast if c != who)
        out.append((who, text.replace("{other}", other.title())))
    return out
