"""Sentences for the demo corpus: a small English grammar with structure a masked
language model can learn, and a sentiment lexicon for opinion sentences.

What there is to learn, on purpose:
- subject-verb agreement, also across a relative clause or an attractor noun
  ("the rope next to the boats is wet", "the sailors who mend the net live ...");
- do-support and auxiliaries ("does not plant", "were", "will water");
- number agreement with numerals ("there is one ...", "there are three ...");
- topic-consistent vocabulary: each sentence draws its nouns, adjectives, verbs,
  places and people from one topic, and verbs only take objects they go with;
- polarity: adjectives and verbs carry a score, intensifiers scale it, negation
  flips and damps it, and in "X was good, but Y was bad" the second clause weighs more.

Every sentence comes with its polarity in [-3, 3] (0 for neutral sentences).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class Verb:
    base: str
    third: str  # third person singular present
    past: str
    ing: str


@dataclasses.dataclass(frozen=True)
class Topic:
    name: str
    nouns: tuple[tuple[str, str], ...]  # (singular, plural)
    adjectives: tuple[str, ...]  # descriptive adjectives that go with these nouns
    verbs: tuple[Verb, ...]  # transitive verbs that take these nouns as objects
    places: tuple[str, ...]
    people: tuple[tuple[str, str], ...]  # (singular, plural) agents typical of the topic


def _verbs(spec: str) -> tuple[Verb, ...]:
    """``"bake bakes baked baking; ..."`` -> verbs (multi-word verbs use ``_``)."""
    out = []
    for item in spec.split(";"):
        forms = [w.replace("_", " ") for w in item.split()]
        out.append(Verb(*forms))
    return tuple(out)


def _pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """``"cake cakes, loaf loaves"`` -> ((singular, plural), ...)."""
    return tuple(tuple(p.split()) for p in spec.split(","))  # type: ignore[misc]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "kitchen",
        _pairs("soup soups, cake cakes, pie pies, salad salads, pot pots, recipe recipes,"
               " sauce sauces, onion onions, loaf loaves, apple apples"),
        ("fresh", "warm", "sweet", "spicy", "crisp", "homemade", "salty", "ripe"),
        _verbs("cook cooks cooked cooking; bake bakes baked baking; taste tastes tasted tasting;"
               " slice slices sliced slicing; stir stirs stirred stirring; serve serves served serving;"
               " wash washes washed washing; prepare prepares prepared preparing"),
        ("in the kitchen", "at the market", "on the stove", "at the bakery"),
        _pairs("cook cooks, baker bakers, chef chefs"),
    ),
    Topic(
        "garden",
        _pairs("rose roses, tree trees, hedge hedges, seed seeds, flower flowers,"
               " tomato tomatoes, lawn lawns, bush bushes, leaf leaves, vegetable vegetables"),
        ("green", "tall", "young", "wild", "bright", "tiny", "tangled", "leafy"),
        _verbs("plant plants planted planting; water waters watered watering;"
               " trim trims trimmed trimming; pick picks picked picking; grow grows grew growing;"
               " dig_up digs_up dug_up digging_up; cut cuts cut cutting; prune prunes pruned pruning"),
        ("in the garden", "behind the house", "by the fence", "in the greenhouse"),
        _pairs("gardener gardeners, farmer farmers, neighbour neighbours"),
    ),
    Topic(
        "travel",
        _pairs("train trains, ticket tickets, map maps, suitcase suitcases, hotel hotels,"
               " road roads, bridge bridges, village villages, harbour harbours, journey journeys"),
        ("long", "early", "crowded", "narrow", "distant", "cheap", "quiet", "late"),
        _verbs("book books booked booking; miss misses missed missing; pack packs packed packing;"
               " cross crosses crossed crossing; visit visits visited visiting; find finds found finding;"
               " follow follows followed following; reach reaches reached reaching"),
        ("at the station", "near the coast", "in the city centre", "across the valley"),
        _pairs("traveller travellers, driver drivers, guide guides"),
    ),
    Topic(
        "music",
        _pairs("song songs, piano pianos, violin violins, concert concerts, melody melodies,"
               " drum drums, choir choirs, record records, guitar guitars, album albums"),
        ("loud", "soft", "slow", "old", "famous", "gentle", "lively", "strange"),
        _verbs("play plays played playing; hear hears heard hearing; sing sings sang singing;"
               " record records recorded recording; practise practises practised practising;"
               " tune tunes tuned tuning; write writes wrote writing; learn learns learned learning"),
        ("in the hall", "at the festival", "in the studio", "on the radio"),
        _pairs("singer singers, musician musicians, teacher teachers"),
    ),
    Topic(
        "school",
        _pairs("lesson lessons, book books, exam exams, essay essays, question questions,"
               " chapter chapters, notebook notebooks, lecture lectures, experiment experiments,"
               " poem poems"),
        ("short", "difficult", "simple", "careful", "clear", "new", "long", "clever"),
        _verbs("read reads read reading; write writes wrote writing; finish finishes finished finishing;"
               " study studies studied studying; explain explains explained explaining;"
               " mark marks marked marking; review reviews reviewed reviewing; copy copies copied copying"),
        ("in the library", "at school", "in the classroom", "at the university"),
        _pairs("student students, teacher teachers, professor professors"),
    ),
    Topic(
        "sea",
        _pairs("boat boats, wave waves, net nets, shell shells, sail sails, island islands,"
               " storm storms, rope ropes, lighthouse lighthouses, anchor anchors"),
        ("grey", "rough", "calm", "salty", "cold", "deep", "distant", "wet"),
        _verbs("sail sails sailed sailing; pull pulls pulled pulling; watch watches watched watching;"
               " repair repairs repaired repairing; tie ties tied tying; paint paints painted painting;"
               " mend mends mended mending; check checks checked checking"),
        ("on the beach", "in the harbour", "near the rocks", "out at sea"),
        _pairs("sailor sailors, fisherman fishermen, captain captains"),
    ),
    Topic(
        "workshop",
        _pairs("table tables, chair chairs, hammer hammers, nail nails, shelf shelves,"
               " door doors, clock clocks, bicycle bicycles, lamp lamps, window windows"),
        ("wooden", "heavy", "broken", "sturdy", "rusty", "polished", "small", "old"),
        _verbs("build builds built building; fix fixes fixed fixing; paint paints painted painting;"
               " sand sands sanded sanding; carry carries carried carrying;"
               " measure measures measured measuring; open opens opened opening;"
               " clean cleans cleaned cleaning"),
        ("in the workshop", "in the garage", "on the bench", "in the shed"),
        _pairs("carpenter carpenters, builder builders, mechanic mechanics"),
    ),
    Topic(
        "city",
        _pairs("street streets, bus buses, shop shops, park parks, museum museums,"
               " square squares, tower towers, cafe cafes, office offices, building buildings"),
        ("busy", "noisy", "modern", "empty", "bright", "narrow", "old", "crowded"),
        _verbs("visit visits visited visiting; leave leaves left leaving; pass passes passed passing;"
               " open opens opened opening; close closes closed closing; describe describes described"
               " describing; photograph photographs photographed photographing; clean cleans cleaned"
               " cleaning"),
        ("downtown", "in the old town", "near the river", "on the main square"),
        _pairs("tourist tourists, officer officers, shopkeeper shopkeepers"),
    ),
)

NAMES = ("Anna", "Tom", "Maria", "David", "Lucy", "Peter", "Sarah", "James", "Emma", "Daniel",
         "Grace", "Henry", "Olivia", "Samuel", "Clara", "Oliver", "Ruth", "Martin", "Alice", "Jack")
RELATIVES_SG = ("my sister", "my brother", "our neighbour", "his uncle", "her aunt", "my cousin",
                "their grandmother", "my friend")
RELATIVES_PL = ("my friends", "my parents", "our neighbours", "her cousins", "the children")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "ten", "twelve")
TIMES_PAST = ("yesterday", "last week", "this morning", "two days ago", "last summer", "on Sunday")
TIMES_FUTURE = ("tomorrow", "next week", "tonight", "on Monday", "next summer", "after lunch")
FREQUENCY = ("often", "usually", "always", "rarely", "sometimes", "never")

# Polarity lexicon: score of the word alone, on the [-3, 3] sentiment scale.
POLAR_ADJECTIVES = {
    "good": 1.3, "nice": 1.0, "lovely": 2.0, "great": 2.1, "wonderful": 2.5, "excellent": 2.6,
    "brilliant": 2.4, "pleasant": 1.3, "delightful": 2.2, "perfect": 2.8, "fine": 0.6,
    "decent": 0.8, "bad": -1.4, "poor": -1.3, "awful": -2.5, "terrible": -2.7, "horrible": -2.8,
    "dreadful": -2.5, "disappointing": -1.8, "boring": -1.2, "unpleasant": -1.5,
    "mediocre": -0.8, "useless": -2.0,
}
POLAR_VERBS = {
    "love": (2.2, "loves", "loved"), "like": (1.2, "likes", "liked"),
    "enjoy": (1.6, "enjoys", "enjoyed"), "admire": (1.8, "admires", "admired"),
    "hate": (-2.4, "hates", "hated"), "dislike": (-1.3, "dislikes", "disliked"),
    "regret": (-1.6, "regrets", "regretted"), "despise": (-2.8, "despises", "despised"),
}
INTENSIFIERS = {"": 1.0, "very": 1.3, "really": 1.25, "quite": 0.8, "extremely": 1.5,
                "a little": 0.6, "rather": 0.85, "so": 1.35}
NEGATION_FACTOR = -0.5  # "not great" is mildly negative, "not terrible" mildly positive

_FEMININE = frozenset({"Anna", "Maria", "Lucy", "Sarah", "Emma", "Grace", "Olivia", "Clara",
                        "Ruth", "Alice", "my sister", "her aunt", "their grandmother"})

# Subjects carry their agreement class: "1" (I), "2" (you), "3" (he, she, Anna), "p" (we, they).
_PRESENT_BE = {"1": "am", "2": "are", "3": "is", "p": "are"}
_PAST_BE = {"1": "was", "2": "were", "3": "was", "p": "were"}
_DO = {"1": "do", "2": "do", "3": "does", "p": "do"}
_HAVE = {"1": "have", "2": "have", "3": "has", "p": "have"}


@dataclasses.dataclass(frozen=True)
class Sentence:
    text: str  # natural casing and punctuation, as it is spoken
    polarity: float  # sentiment carried by the words, in [-3, 3]
    topic: str


def _clip3(x: float) -> float:
    return float(min(3.0, max(-3.0, x)))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _finish(words: str, end: str = ".") -> str:
    words = re.sub(r"\s+", " ", words).strip()
    words = words[0].upper() + words[1:]
    return words + end


class SentenceGenerator:
    """Draws sentences with a numpy Generator; the same generator state gives the same
    sentences."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    # -- small helpers -------------------------------------------------------------
    def _pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def _chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def topic(self) -> Topic:
        return self._pick(TOPICS)

    def _subject(self, topic: Topic) -> tuple[str, str]:
        """(subject, agreement class)."""
        kind = self.rng.integers(6)
        if kind == 0:
            return self._pick((("I", "1"), ("you", "2"), ("we", "p"), ("they", "p"),
                               ("he", "3"), ("she", "3")))
        if kind == 1:
            return self._pick(NAMES), "3"
        if kind == 2:
            return self._pick(RELATIVES_SG), "3"
        if kind == 3:
            return self._pick(RELATIVES_PL), "p"
        sg, pl = self._pick(topic.people)
        if kind == 4:
            return f"the {self._pick(('', 'young ', 'old ', 'new '))}{sg}", "3"
        return f"the {pl}", "p"

    @staticmethod
    def _pronoun(agr: str, subject: str) -> str:
        """The pronoun that refers back to ``subject``."""
        if subject in ("I", "you", "we", "they", "he", "she"):
            return subject
        return "they" if agr == "p" else "she" if subject in _FEMININE else "he"

    @staticmethod
    def _present(verb: Verb, agr: str) -> str:
        return verb.third if agr == "3" else verb.base

    def _noun_phrase(self, topic: Topic, plural: bool | None = None, adjective: float = 0.6) -> str:
        sg, pl = self._pick(topic.nouns)
        if plural is None:
            plural = self._chance(0.4)
        adj = f"{self._pick(topic.adjectives)} " if self._chance(adjective) else ""
        return f"the {adj}{pl if plural else sg}"

    def _place(self, topic: Topic, p: float = 0.5) -> str:
        return self._pick(topic.places) if self._chance(p) else ""

    # -- neutral sentences ---------------------------------------------------------
    def neutral(self, topic: Topic | None = None) -> Sentence:
        topic = topic or self.topic()
        rng = self.rng
        kind = int(rng.integers(11))
        verb = self._pick(topic.verbs)
        end = "."
        if kind == 0:  # present habitual, agreement
            subj, agr = self._subject(topic)
            freq = f"{self._pick(FREQUENCY)} " if self._chance(0.4) else ""
            text = f"{subj} {freq}{self._present(verb, agr)} {self._noun_phrase(topic)} {self._place(topic)}"
        elif kind == 1:  # past with a time phrase
            subj, _ = self._subject(topic)
            text = f"{self._pick(TIMES_PAST)}, {subj} {verb.past} {self._noun_phrase(topic)} {self._place(topic)}"
        elif kind == 2:  # future
            subj, _ = self._subject(topic)
            text = f"{subj} will {verb.base} {self._noun_phrase(topic)} {self._pick(TIMES_FUTURE)}"
        elif kind == 3:  # copula, number agreement with the noun
            sg, pl = self._pick(topic.nouns)
            plural = self._chance(0.5)
            be = (_PAST_BE if self._chance(0.5) else _PRESENT_BE)["p" if plural else "3"]
            text = f"the {pl if plural else sg} {self._place(topic, 0.6)} {be} {self._pick(topic.adjectives)}"
        elif kind == 4:  # existential with a numeral
            sg, pl = self._pick(topic.nouns)
            adj = self._pick(topic.adjectives)
            if self._chance(0.3):
                text = f"there is one {adj} {sg} {self._pick(topic.places)}"
            else:
                text = f"there are {self._pick(NUMBERS)} {adj} {pl} {self._pick(topic.places)}"
        elif kind == 5:  # negation with do-support
            subj, agr = self._subject(topic)
            do = "did" if self._chance(0.5) else _DO[agr]
            text = f"{subj} {do} not {verb.base} {self._noun_phrase(topic)} {self._place(topic)}"
        elif kind == 6:  # progressive
            subj, agr = self._subject(topic)
            be = (_PAST_BE if self._chance(0.4) else _PRESENT_BE)[agr]
            text = f"{subj} {be} {verb.ing} {self._noun_phrase(topic)} {self._place(topic)}"
        elif kind == 7:  # question
            subj, agr = self._subject(topic)
            aux = self._pick((_DO[agr], "did", "will"))
            text = f"{aux} {subj} {verb.base} {self._noun_phrase(topic)} {self._place(topic)}"
            end = "?"
        elif kind == 8:  # relative clause: the head noun decides the main verb
            sg, pl = self._pick(topic.people)
            plural = self._chance(0.5)
            agr = "p" if plural else "3"
            inner = self._present(verb, agr)
            live = "live" if plural else "lives"
            text = f"the {pl if plural else sg} who {inner} {self._noun_phrase(topic)} {live} {self._pick(topic.places)}"
        elif kind == 9:  # attractor: "the rope next to the boats is wet"
            head_sg, head_pl = self._pick(topic.nouns)
            other_sg, other_pl = self._pick([n for n in topic.nouns if n[0] != head_sg])
            plural = self._chance(0.5)
            be = _PRESENT_BE["p" if plural else "3"]
            other = other_sg if plural else other_pl  # attractor of the other number
            text = f"the {head_pl if plural else head_sg} next to the {other} {be} {self._pick(topic.adjectives)}"
        else:  # obligation and reason: "has to" agrees, the pronoun refers back
            subj, agr = self._subject(topic)
            verb2 = self._pick(topic.verbs)
            text = (f"{subj} {_HAVE[agr]} to {verb.base} {self._noun_phrase(topic, adjective=0.3)}"
                    f" because {self._pick(TIMES_PAST)} {self._pronoun(agr, subj)} {verb2.past}"
                    f" {self._noun_phrase(topic, adjective=0.3)}")
        return Sentence(_finish(text, end), 0.0, topic.name)

    # -- opinion sentences (polarity from the lexicon) -----------------------------
    def _polar_adjective(self, sign: int | None) -> tuple[str, float]:
        words = [w for w, s in POLAR_ADJECTIVES.items() if sign is None or np.sign(s) == sign]
        word = self._pick(words)
        return word, POLAR_ADJECTIVES[word]

    def _intensifier(self, negated: bool) -> str:
        # "not a little great" is not English; after "not" only plain degree words.
        return self._pick(("", "very", "really", "quite") if negated else tuple(INTENSIFIERS))

    def opinion(self, topic: Topic | None = None, sign: int | None = None) -> Sentence:
        """A sentence whose words carry sentiment; ``sign`` (+1 / -1) fixes its direction."""
        topic = topic or self.topic()
        kind = int(self.rng.integers(6))
        sg, pl = self._pick(topic.nouns)
        plural = self._chance(0.35)
        noun = pl if plural else sg
        num = "p" if plural else "3"
        # Negation flips the sign, so draw the word from the opposite side when negating.
        negate = self._chance(0.2)
        word_sign = None if sign is None else (-sign if negate else sign)
        end = "."
        if kind == 0:  # "the soup was really lovely" / "the soups are not great"
            adj, score = self._polar_adjective(word_sign)
            intens = self._intensifier(negate)
            be = (_PAST_BE if self._chance(0.5) else _PRESENT_BE)[num]
            neg = "not " if negate else ""
            text = f"the {noun} {self._place(topic, 0.3)} {be} {neg}{intens} {adj}"
            polarity = score * INTENSIFIERS[intens]
        elif kind == 1:  # "my sister loves the fresh cakes" / "they do not like the bus"
            names = [v for v, (s, _, _) in POLAR_VERBS.items()
                     if word_sign is None or np.sign(s) == word_sign]
            base = self._pick(names)
            score, third, past = POLAR_VERBS[base]
            subj, agr = self._subject(topic)
            if negate:
                do = "did" if self._chance(0.4) else _DO[agr]
                verb = f"{do} not {base}"
            elif self._chance(0.4):
                verb = past
            else:
                verb = third if agr == "3" else base
            adj = f"{self._pick(topic.adjectives)} " if self._chance(0.5) else ""
            text = f"{subj} {verb} the {adj}{noun} {self._place(topic, 0.4)}"
            polarity = score
        elif kind == 2:  # exclamation, no negation
            adj, score = self._polar_adjective(sign)
            negate = False
            text = f"what {_article(adj)} {adj} {sg} that was"
            polarity = score * 1.1
            end = "!"
        elif kind == 3:  # contrast: the clause after "but" weighs more
            adj2, s2 = self._polar_adjective(sign)
            adj1, s1 = self._polar_adjective(-int(np.sign(s2)))
            sg2, _ = self._pick([n for n in topic.nouns if n[0] != sg])
            negate = False
            text = f"the {sg} was {adj1}, but the {sg2} was {adj2}"
            polarity = 0.3 * s1 + 0.7 * s2
        elif kind == 4:  # first-person opinion
            adj, score = self._polar_adjective(word_sign)
            intens = self._intensifier(negate)
            be = "was" if not plural else "were"
            neg = "not " if negate else ""
            text = f"I thought the {noun} {self._place(topic, 0.5)} {be} {neg}{intens} {adj}"
            polarity = score * INTENSIFIERS[intens]
        else:  # reported opinion
            adj, score = self._polar_adjective(word_sign)
            subj, agr = self._subject(topic)
            say = "said" if self._chance(0.6) else ("says" if agr == "3" else "say")
            be = _PAST_BE[num] if say == "said" else _PRESENT_BE[num]
            neg = "not " if negate else ""
            text = f"{subj} {say} that the {noun} {be} {neg}{adj}"
            polarity = score
        if negate:
            polarity *= NEGATION_FACTOR
        return Sentence(_finish(text, end), round(_clip3(polarity), 3), topic.name)

    def review(self, topic: Topic | None = None) -> Sentence:
        """A review-like line whose clauses agree in sentiment, as opinions in running
        text do ("the soup was lovely and the bread was really perfect", "I hated the
        bus, it was awful"). ``opinion`` alone gives a masked language model no context
        that tells "good" from "bad" (they fill the same slots, and "but" pairs
        opposites); agreeing clauses are that context, the one word embeddings learn
        sentiment from in real text."""
        topic = topic or self.topic()
        sign = 1 if self._chance(0.5) else -1
        (sg, _), (sg2, _) = (self._pick(topic.nouns), self._pick(topic.nouns))
        kind = int(self.rng.integers(3))
        if kind == 0:
            (adj1, s1), (adj2, s2) = self._polar_adjective(sign), self._polar_adjective(sign)
            intens = self._pick(tuple(INTENSIFIERS))
            text = f"the {sg} was {adj1} and the {sg2} was {intens} {adj2}".replace("  ", " ")
            polarity = (s1 + s2 * INTENSIFIERS[intens]) / 2
        elif kind == 1:
            names = [v for v, (sc, _, _) in POLAR_VERBS.items() if np.sign(sc) == sign]
            score, _, past = POLAR_VERBS[self._pick(names)]
            adj, s2 = self._polar_adjective(sign)
            text = f"I {past} the {sg}, it was {adj}"
            polarity = (score + s2) / 2
        else:
            (adj1, s1), (adj2, s2) = self._polar_adjective(sign), self._polar_adjective(sign)
            text = f"such {_article(adj1)} {adj1} {sg}, and so {adj2} too"
            polarity = (s1 + s2) / 2
        return Sentence(_finish(text), round(_clip3(polarity), 3), topic.name)

    # -- emotional lines for the dialogue corpus ------------------------------------
    def emotional(self, emotion: str) -> Sentence:
        """A conversational line whose words suggest a valence. Angry, sad and frustrated
        lines share a negative pool, happy and excited lines a positive one, so the words
        give the valence and the voice has to give the arousal."""
        topic = self.topic()
        noun = self._pick(topic.nouns)[0]
        name = self._pick(NAMES)
        num = self._pick(NUMBERS)
        verb = self._pick(topic.verbs)
        shared_neg = (
            f"I can't believe you {verb.past} my {noun} again.",
            "Why does this always happen to me?",
            "You never listen to me.",
            "Nothing ever works out the way we planned.",
            f"I told you the {noun} was broken.",
            f"I don't want to talk about the {noun} anymore.",
            f"How could you forget about the {noun}?",
            f"It's over, {name}. It's just over.",
        )
        shared_pos = (
            f"That is wonderful news about the {noun}!",
            "I'm so glad you came back.",
            f"We finally {verb.past} the {noun}!",
            f"I can't wait to see {name} again.",
            f"This is the best {noun} I have ever seen.",
            "You look great today.",
            f"Thank you so much for the {noun}.",
        )
        own = {
            "ang": (f"Don't you dare touch my {noun}!", "Get out of here right now!",
                    "This is completely unacceptable!", "I am sick and tired of your excuses."),
            "sad": (f"I miss {name} so much.", f"I just feel so alone since {name} left.",
                    "I don't think I can do this anymore.", f"Everything reminds me of {name}."),
            "fru": (f"This {noun} still doesn't work.", f"I've been waiting here for {num} hours.",
                    "Why is everything so complicated?"),
            "hap": (f"It was a lovely evening with {name}.", "I feel really good about this.",
                    f"The {noun} turned out just right."),
            "exc": ("Oh my gosh, we did it!", f"Guess what, {name} said yes!",
                    f"We're going to see the {noun} tomorrow!"),
            "neu": (f"Do you have the forms for the {noun}?", "Okay, let me check.",
                    f"The office opens at {num}.", "I'll call you when I get there."),
        }
        if emotion in ("ang", "sad", "fru"):
            pool = shared_neg if self._chance(0.6) else own[emotion]
            polarity = -1.5
        elif emotion in ("hap", "exc"):
            pool = shared_pos if self._chance(0.6) else own[emotion]
            polarity = 1.5
        else:
            pool = own["neu"]
            polarity = 0.0
        return Sentence(self._pick(pool), polarity, topic.name)


def librispeech_transcript(text: str) -> str:
    """LibriSpeech convention: upper case, letters, apostrophes and single spaces only."""
    cleaned = re.sub(r"[^A-Z' ]+", " ", text.upper())
    return re.sub(r"\s+", " ", cleaned).strip()
