"""Deterministic generator of varied English sentences for the embedded corpus.

The text is written by this module (no third-party text), from a small grammar: statements,
questions, exclamations, reported speech, coordinated clauses, and written forms that the
front-end must spell out (numbers, years, money, times, ordinals, percentages, abbreviations).
"""

import random

_NAMES = (
    "Anna Ben Clara David Emma Frank Grace Henry Iris Jack Laura Martin Nora Oliver Paula "
    "Quentin Rosa Samuel Tessa Victor Wendy Arthur Helen Simon Lucy"
).split()
_SURNAMES = "Smith Brown Taylor Wilson Moore Clark Hall Walker Young King Wright Hill".split()
_TITLES = ["Dr.", "Mr.", "Mrs.", "Prof.", "Capt."]
# (singular, plural)
_NOUNS = [tuple(p.split("/")) for p in (
    "dog/dogs cat/cats teacher/teachers farmer/farmers child/children river/rivers "
    "letter/letters window/windows garden/gardens bridge/bridges ship/ships horse/horses "
    "doctor/doctors painter/painters student/students village/villages mountain/mountains "
    "lamp/lamps clock/clocks engine/engines basket/baskets storm/storms island/islands "
    "train/trains kettle/kettles candle/candles soldier/soldiers merchant/merchants "
    "library/libraries city/cities box/boxes fox/foxes mouse/mice woman/women man/men "
    "story/stories key/keys road/roads tower/towers apple/apples coat/coats machine/machines"
).split()]  # fmt: skip
_ADJECTIVES = (
    "old young quiet bright heavy small large careful clever tired happy cold warm "
    "broken golden silver narrow distant patient curious gentle strange ancient "
    "noisy empty busy simple"
).split()
_VERBS_PAST = (
    "found saw carried painted moved cleaned opened closed watched followed "
    "repaired visited counted described remembered borrowed noticed chose "
    "lifted pushed"
).split()
_VERBS_BASE = (
    "find see carry paint move clean open close watch follow repair visit count "
    "describe remember borrow notice choose lift push"
).split()
_INTRANSITIVE = (
    "slept laughed waited arrived vanished shouted smiled stumbled listened "
    "returned hesitated whispered"
).split()
_PLACES = (
    "near the station|behind the church|across the valley|under the old bridge|"
    "at the edge of the forest|inside the small shop|along the river bank|"
    "on the top floor|beside the harbour|in the middle of the square|"
    "at the back of the hall|by the kitchen door"
).split("|")
_TIMES = (
    "yesterday|last night|this morning|early in the evening|after the long winter|"
    "before sunrise|on a rainy afternoon|during the holidays|a week ago|"
    "just after lunch"
).split("|")
_ADVERBS = "slowly quietly suddenly carefully happily finally gladly barely openly".split()
_SAYING = "said|asked whether|explained that|wrote that|told us that|believed that".split("|")
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_CONNECTIVES = ["but", "and", "so", "because", "although", "while", "until"]


def _np(r: random.Random, plural: bool | None = None) -> str:
    singular, many = r.choice(_NOUNS)
    plural = r.random() < 0.3 if plural is None else plural
    adj = f"{r.choice(_ADJECTIVES)} " if r.random() < 0.6 else ""
    if plural:
        det = r.choice(["the", "some", "many", "two", "three", "several", "those"])
        return f"{det} {adj}{many}"
    det = r.choice(["the", "a", "that", "this", "every", "our"])
    if det == "a" and (adj or singular)[0] in "aeiou":
        det = "an"
    return f"{det} {adj}{singular}"


def _subject(r: random.Random) -> str:
    roll = r.random()
    if roll < 0.25:
        return r.choice(_NAMES)
    if roll < 0.35:
        return f"{r.choice(_TITLES)} {r.choice(_SURNAMES)}"
    return _np(r)


def _clause(r: random.Random) -> str:
    subj = _subject(r)
    if r.random() < 0.25:
        adv = f" {r.choice(_ADVERBS)}" if r.random() < 0.5 else ""
        core = f"{subj}{adv} {r.choice(_INTRANSITIVE)}"
    else:
        core = f"{subj} {r.choice(_VERBS_PAST)} {_np(r)}"
    if r.random() < 0.5:
        core += f" {r.choice(_PLACES)}"
    if r.random() < 0.3:
        core += f" {r.choice(_TIMES)}"
    return core


def _number_sentence(r: random.Random) -> str:
    kind = r.randrange(7)
    name = f"{r.choice(_TITLES)} {r.choice(_SURNAMES)}"
    if kind == 0:
        return f"{name} paid ${r.randint(2, 950)}.{r.randint(10, 99)} for {r.randint(2, 40)} {r.choice(_NOUNS)[1]}."
    if kind == 1:
        return f"In {r.randint(1820, 2024)}, {_clause(r)}."
    if kind == 2:
        hour, minute = r.randint(1, 12), r.choice(["00", "05", "15", "30", "45", "20"])
        return f"We will meet at {hour}:{minute} on {r.choice(_MONTHS)} {r.randint(1, 28)}."
    if kind == 3:
        return f"About {r.randint(2, 99)}% of the {r.choice(_NOUNS)[1]} {r.choice(_PLACES)} {r.choice(_INTRANSITIVE)}."
    if kind == 4:
        return f"The {r.choice(['1st', '2nd', '3rd', '4th', '10th', '21st'])} {r.choice(_NOUNS)[0]} cost {r.randint(1, 20)},{r.randint(100, 999)} dollars."
    if kind == 5:
        return f"{r.choice(_NAMES)} counted {r.randint(11, 4999)} {r.choice(_NOUNS)[1]} in {r.randint(2, 12)} days."
    return f"{name} lives at {r.randint(2, 220)} {r.choice(_SURNAMES)} Street with {_np(r, plural=True)}."


def sentence(r: random.Random) -> str:
    roll = r.random()
    if roll < 0.15:
        return _number_sentence(r)
    if roll < 0.3:
        aux = r.choice(["Did", "Why did", "When did", "Where did", "How did"])
        subj = _subject(r)
        return f"{aux} {subj} {r.choice(_VERBS_BASE)} {_np(r)}?"
    if roll < 0.38:
        return f"What {r.choice(_ADJECTIVES)} {r.choice(_NOUNS)[1]} they were!"
    if roll < 0.55:
        who = r.choice(_NAMES)
        verb = r.choice(_SAYING)
        text = f"{who} {verb} {_clause(r)}"
        return text + ("?" if "whether" in verb else ".")
    if roll < 0.75:
        first = _clause(r)
        return f"{first[0].upper()}{first[1:]}, {r.choice(_CONNECTIVES)} {_clause(r)}."
    first = _clause(r)
    return f"{first[0].upper()}{first[1:]}."


def sentences(n: int, *, seed: int = 0, min_words: int = 4, max_words: int = 28) -> list[str]:
    """n distinct sentences, the same for the same seed."""
    r = random.Random(seed)
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        if len(seen) == n:
            break
        s = sentence(r)
        s = s[0].upper() + s[1:]
        if min_words <= len(s.split()) <= max_words:
            seen.setdefault(s)
    if len(seen) < n:
        raise ValueError(f"the grammar yields only {len(seen)} distinct sentences, asked for {n}")
    return list(seen)


# The generalisation control (the `novel` split): content words that the grammar above never
# uses, so no sentence of train, valid or test contains them. A model that reads phonemes can
# say them; one that memorised the sound of each training word cannot.
_NOVEL_NAMES = (
    "Beatrice Conrad Dorothy Edgar Felix Gloria Harold Ingrid Julius Kevin Leonard Miriam "
    "Norman Phoebe Rupert Sylvia Theodore Ursula Walter Yvonne"
).split()
_NOVEL_NOUNS = (
    "pencil blanket carriage cottage feather lantern meadow orchard parcel pebble saddle "
    "shovel tunnel violin wagon chimney ladder puppet compass trumpet"
).split()
_NOVEL_ADJECTIVES = (
    "purple wooden shiny dusty fragile hollow muddy rusty crooked sleepy tiny fierce humble "
    "eager sturdy"
).split()
_NOVEL_VERBS = (  # (past, base)
    "polished/polish wrapped/wrap dropped/drop grabbed/grab buried/bury dragged/drag "
    "fetched/fetch kicked/kick tossed/toss weighed/weigh"
).split()
_NOVEL_INTRANSITIVE = "giggled trembled yawned wandered frowned shivered sneezed sighed".split()
# the only other words of a novel sentence: articles, prepositions and the like
NOVEL_FUNCTION_WORDS = frozenset(
    "the a an that this every our some two three did said near behind under beside inside".split()
)


def _novel_np(r: random.Random, dets=("the", "a", "that", "this", "every", "our")) -> str:
    det = r.choice(dets)
    adj = r.choice(_NOVEL_ADJECTIVES)
    if det == "a" and adj[0] in "aeiou":
        det = "an"
    return f"{det} {adj} {r.choice(_NOVEL_NOUNS)}"


def novel_sentence(r: random.Random) -> str:
    past, base = r.choice(_NOVEL_VERBS).split("/")
    place = f"{r.choice(['near', 'behind', 'under', 'beside', 'inside'])} {_novel_np(r)}"
    kind = r.randrange(4)
    if kind == 0:
        return f"{r.choice(_NOVEL_NAMES)} {past} {_novel_np(r)}."
    if kind == 1:
        np = _novel_np(r)
        return f"{np[0].upper()}{np[1:]} {r.choice(_NOVEL_INTRANSITIVE)} {place}."
    if kind == 2:
        return f"Did {r.choice(_NOVEL_NAMES)} {base} {_novel_np(r)} {place}?"
    np = _novel_np(r, ("the", "a", "every", "our"))
    return f"{r.choice(_NOVEL_NAMES)} said that {np} {r.choice(_NOVEL_INTRANSITIVE)}."


def novel_sentences(n: int, *, seed: int = 0) -> list[str]:
    """n distinct sentences whose content words never occur in `sentences` (the same for the
    same seed)."""
    r = random.Random(seed)
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        if len(seen) == n:
            break
        seen.setdefault(novel_sentence(r))
    if len(seen) < n:
        raise ValueError(f"the novel grammar yields only {len(seen)} sentences, asked for {n}")
    return list(seen)
