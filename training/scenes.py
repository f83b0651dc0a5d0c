"""A synthetic world of coloured shapes whose every fact is known, for hallucination labels.

A `Scene` is a 3×3 grid holding 2–6 shapes (circle, square, triangle, diamond, star), each with a
colour, a size and a cell; no two share both colour and shape, so "the red circle" always names
one thing. `draw` renders it with Pillow (nothing is downloaded); `facts` and `captions` state
what is true; `respond` writes an answer to one of its `questions` that makes a chosen number of
true and false claims, and returns the text with the code-point span, category and truth of each
claim; `claims_of` is the oracle that reads any text of this grammar back against the scene.

Categories follow MMHal-Bench (object, attribute, count, relation, comparison), shared by the page,
the demo and the loop, so a simulated annotator marks exactly the spans a careful human would.

The grammar: a response is sentences joined by single spaces, each ending in ".". A sentence is
a claim when it is one of these forms (anything else, such as "Sure — here is what I see 🔍.",
is not a claim):

    object      There is a|no <shape> in the image.
    attribute   The <shape> <place> is <colour>.        The <colour> <shape> is small|large.
    count       There is one <shape>.                   There are <two..nine> <shapes>.
    relation    The <colour> <shape> is to the left of|to the right of|above|below the <colour> <shape>.
    comparison  The <colour> <shape> is larger than|smaller than|the same size as the <colour> <shape>.

A claim that names something not in the scene (an absent shape, colour-shape pair, or nothing of
that shape at that place) is a false *object* claim whatever its form: the object is what was
made up. Offsets are Python `str` indices (Unicode code points), half-open, as in judgements.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
PLURALS = {shape: shape + "s" for shape in SHAPES}
# Saturated colours that stay apart after a 32-pixel downsample and on the light background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 48, 49), "green": (39, 160, 90), "blue": (41, 98, 230),
    "yellow": (235, 190, 20), "purple": (142, 68, 173), "orange": (235, 120, 30),
}  # fmt: skip
SIZES = ("small", "large")
CATEGORIES = ("object", "attribute", "count", "relation", "comparison")
GRID = 3
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Where each cell is, as the claims say it; (row, col) with row 0 at the top.
_PLACE_WORDS = (
    ("in the top left corner", "at the top", "in the top right corner"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left corner", "at the bottom", "in the bottom right corner"),
)
PLACES = {(r, c): words for r, row in enumerate(_PLACE_WORDS) for c, words in enumerate(row)}
RELATIONS = ("to the left of", "to the right of", "above", "below")
COMPARISONS = ("larger than", "smaller than", "the same size as")
# Sentences that are not claims; the first two hold code points beyond ASCII on purpose, so that
# consumers of the offsets meet an em dash and an astral emoji (two UTF-16 units, one code point).
LEAD_INS = (
    "Sure — here is what I see 🔍.",
    "Looking closely at the image, here is what I notice 🙂.",
    "Here is my answer.",
    "Let me describe it.",
)
BACKGROUND = (246, 245, 240)
OUTLINE = (40, 40, 40)


@dataclass(frozen=True)
class Item:
    """One shape of a scene. `dx`, `dy` nudge it inside its cell (fractions of a cell)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def place(self) -> str:
        return PLACES[(self.row, self.col)]


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]

    def count(self, shape: str) -> int:
        return sum(item.shape == shape for item in self.items)

    def shapes(self) -> list[str]:
        """The shapes present, in SHAPES order."""
        return [shape for shape in SHAPES if self.count(shape)]

    def named(self, colour: str, shape: str) -> Item | None:
        return next((i for i in self.items if (i.colour, i.shape) == (colour, shape)), None)

    def at(self, row: int, col: int) -> Item | None:
        return next((i for i in self.items if (i.row, i.col) == (row, col)), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (e.g. for a prompt's metadata); `Scene.from_dict` reads it back."""
        return {"items": [asdict(item) for item in self.items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(items=tuple(Item(**item) for item in data["items"]))


@dataclass(frozen=True, order=True)
class Claim:
    """One claim of a response: `text[start:end]` is its sentence, full stop included."""

    start: int
    end: int
    category: str
    true: bool


@dataclass(frozen=True)
class Question:
    """A question about a scene. `category`/`subject` say what a direct answer claims (None for
    an open question such as a description)."""

    text: str
    category: str | None = None
    subject: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Response:
    text: str
    claims: tuple[Claim, ...]

    @property
    def false_claims(self) -> tuple[Claim, ...]:
        return tuple(c for c in self.claims if not c.true)


def random_scene(rng: random.Random, *, min_items: int = 2, max_items: int = 6) -> Scene:
    """A scene of min_items..max_items shapes; the same rng state always gives the same scene.

    Two to four of the five shapes appear: a made-up object is always possible, and a question
    about one shape still leaves another to miscount; relations and comparisons always have a pair.
    """
    if not 2 <= min_items <= max_items <= GRID * GRID:
        raise ValueError(f"need 2 <= min_items <= max_items <= {GRID * GRID}")
    n = rng.randint(min_items, max_items)
    kinds = rng.sample(SHAPES, rng.randint(2, min(4, n)))
    shapes = kinds + [rng.choice(kinds) for _ in range(n - len(kinds))]
    while any(
        shapes.count(s) > len(COLOURS) for s in kinds
    ):  # a shape has at most one item per colour
        shapes = kinds + [rng.choice(kinds) for _ in range(n - len(kinds))]
    cells = rng.sample(sorted(PLACES), n)
    used: set[tuple[str, str]] = set()
    items = []
    for shape, (row, col) in zip(shapes, cells, strict=True):
        colour = rng.choice([c for c in COLOURS if (c, shape) not in used])
        used.add((colour, shape))
        # A nudge inside the cell, small enough that a column or row never looks shared.
        dx, dy = (round(rng.uniform(-0.05, 0.05), 3) for _ in range(2))
        items.append(Item(shape, colour, rng.choice(SIZES), row, col, dx, dy))
    return Scene(items=tuple(items))


# --- drawing ------------------------------------------------------------------------------------


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    # star: five points, inner radius 0.45
    radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    angles = [k * math.pi / 5 for k in range(10)]
    return [
        (cx + q * math.sin(a), cy - q * math.cos(a)) for q, a in zip(radii, angles, strict=True)
    ]


def draw(scene: Scene, size: int = 256) -> Image.Image:
    """The scene as a size×size RGB image: deterministic for a given scene, size and Pillow."""
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    # Drawn larger and downsampled for smooth edges: 4× keeps a 32-pixel star a star, 2× is
    # enough at demo sizes and four times cheaper.
    canvas = size * (4 if size < 128 else 2)
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    pen = ImageDraw.Draw(image)
    margin = 0.06 * canvas
    cell = (canvas - 2 * margin) / GRID
    line = max(1, round(canvas / 160))  # 1.5 px at 256, a hairline at 32
    for item in scene.items:
        cx = margin + (item.col + 0.5 + item.dx) * cell
        cy = margin + (item.row + 0.5 + item.dy) * cell
        r = cell * (0.38 if item.size == "large" else 0.2)
        fill = COLOURS[item.colour]
        if item.shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=OUTLINE, width=line)
        elif item.shape == "square":
            s = 0.85 * r
            pen.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=OUTLINE, width=line)
        else:
            pen.polygon(_outline(item.shape, cx, cy, r), fill=fill, outline=OUTLINE, width=line)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def png_bytes(scene: Scene, size: int = 256) -> bytes:
    """`draw` encoded as PNG (no metadata)."""
    out = io.BytesIO()
    draw(scene, size).save(out, format="PNG")
    return out.getvalue()


# --- claims ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    """A sentence the generator may say: its category, whether it holds, and what it is about.

    Two statements about one subject are never said together, so a response never contradicts
    itself: object and count claims about one shape share a subject ("There is no circle" next to
    "There are two circles" would be a contradiction, not a hallucination to spot).
    """

    text: str
    category: str
    true: bool
    subject: tuple[Any, ...]


def _object(shape: str, present: bool) -> str:
    return f"There is {'a' if present else 'no'} {shape} in the image."


def _count(shape: str, n: int) -> str:
    return f"There is one {shape}." if n == 1 else f"There are {NUMBERS[n]} {PLURALS[shape]}."


def _pair_key(a: Item, b: Item) -> frozenset[str]:
    return frozenset((a.name, b.name))


def _link_holds(a: Item, b: Item, link: str) -> bool:
    """Whether "the <a> is <link> the <b>" holds: by grid cell for relations, by size class for
    comparisons."""
    return {
        "to the left of": a.col < b.col,
        "to the right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
        "larger than": (a.size, b.size) == ("large", "small"),
        "smaller than": (a.size, b.size) == ("small", "large"),
        "the same size as": a.size == b.size,
    }[link]


@functools.lru_cache(maxsize=1024)  # a loop asks many responses of one scene
def _statements(scene: Scene) -> tuple[_Statement, ...]:
    """Every claim of the grammar about this scene that the generator may make, true and false."""
    out = []
    for shape in SHAPES:
        present = scene.count(shape) > 0
        out.append(_Statement(_object(shape, True), "object", present, ("shape", shape)))
        out.append(_Statement(_object(shape, False), "object", not present, ("shape", shape)))
        if present:
            n = scene.count(shape)
            for k in range(1, max(n + 2, 3) + 1):
                out.append(_Statement(_count(shape, k), "count", k == n, ("shape", shape)))
    for item in scene.items:
        for colour in COLOURS:
            text = f"The {item.shape} {item.place} is {colour}."
            subject: tuple[Any, ...] = ("colour", item.row, item.col)
            out.append(_Statement(text, "attribute", colour == item.colour, subject))
        for size in SIZES:
            text = f"The {item.name} is {size}."
            subject = ("size", item.colour, item.shape)
            out.append(_Statement(text, "attribute", size == item.size, subject))
    for a, b in itertools.permutations(scene.items, 2):
        pair = _pair_key(a, b)
        for link in RELATIONS + COMPARISONS:
            category = "relation" if link in RELATIONS else "comparison"
            holds = _link_holds(a, b, link)
            out.append(
                _Statement(
                    f"The {a.name} is {link} the {b.name}.", category, holds, (category, pair)
                )
            )
    return tuple(out)


def facts(scene: Scene) -> dict[str, list[str]]:
    """Every true claim of the grammar about the scene, by category."""
    found: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for statement in _statements(scene):
        if statement.true:
            found[statement.category].append(statement.text)
    return found


def _listing(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(scene: Scene) -> list[str]:
    """True descriptions of the whole scene (the factual context LLaVA-RLHF gives its reward
    model), ordered top to bottom, left to right."""
    ordered = sorted(scene.items, key=lambda i: (i.row, i.col))
    shapes = [f"a {i.size} {i.name} {i.place}" for i in ordered]
    counts = [
        f"{NUMBERS[scene.count(s)]} {PLURALS[s] if scene.count(s) > 1 else s}"
        for s in scene.shapes()
    ]
    return [
        f"{NUMBERS[len(ordered)].capitalize()} shapes on a light background: {_listing(shapes)}.",
        f"The picture shows {_listing(counts)}.",
    ]


def questions(scene: Scene) -> list[Question]:
    """Questions about the scene, each with the subject a direct answer makes a claim about."""
    asked = [Question("Describe the image.")]
    for shape in SHAPES:
        asked.append(Question(f"Is there a {shape} in the image?", "object", ("shape", shape)))
    for shape in scene.shapes():
        asked.append(Question(f"How many {PLURALS[shape]} are there?", "count", ("shape", shape)))
    for item in scene.items:
        where = f"the {item.shape} {item.place}"
        asked.append(
            Question(f"What colour is {where}?", "attribute", ("colour", item.row, item.col))
        )
    for a, b in itertools.combinations(scene.items, 2):
        pair, x, y = _pair_key(a, b), a.name, b.name
        asked.append(
            Question(f"Where is the {x} relative to the {y}?", "relation", ("relation", pair))
        )
        asked.append(
            Question(f"Which is larger, the {x} or the {y}?", "comparison", ("comparison", pair))
        )
    return asked


def respond(
    scene: Scene,
    question: Question,
    rng: random.Random,
    n_true: int = 3,
    n_false: int = 1,
    categories: Iterable[str] = CATEGORIES,
) -> Response:
    """An answer making n_true true claims and n_false false ones, with every claim's span.

    False claims take their categories from `categories` in turn (shuffled); a direct answer to
    the question comes first (false when its category is among the false ones, so the answer
    itself hallucinates); no two claims share a subject, so a response never contradicts itself.
    Raises ValueError when the scene has too few claims left to say.
    """
    wanted = list(categories)
    if n_false and not wanted:
        raise ValueError("n_false > 0 needs at least one category")
    if unknown := set(wanted) - set(CATEGORIES):
        raise ValueError(f"unknown categories: {sorted(unknown)}")
    if n_true < 0 or n_false < 0:
        raise ValueError("n_true and n_false must be >= 0")
    rng.shuffle(wanted)
    false_categories = [wanted[i % len(wanted)] for i in range(n_false)]
    pool = _statements(scene)
    said: list[_Statement] = []

    def pick(category: str | None, true: bool, subject: tuple[Any, ...] | None = None) -> bool:
        used = {s.subject for s in said}
        options = [
            s
            for s in pool
            if s.true == true
            and (category is None or s.category == category)
            and (s.subject == subject if subject is not None else s.subject not in used)
            # "There is no <shape>" only as the answer to "Is there a <shape>?": a description
            # listing what is absent reads like no answer anyone gives.
            and (subject is not None or not (true and s.text.startswith("There is no ")))
        ]
        if not options:
            return False
        said.append(rng.choice(options))
        return True

    answered = False
    if question.subject is not None:
        if question.category in false_categories:
            answered = pick(question.category, False, question.subject)
            if answered:
                false_categories.remove(question.category)
        elif n_true:
            answered = pick(question.category, True, question.subject)
    # Scarce subjects first: a count needs a shape that is there, while a made-up object can
    # always be one that is not (the order of the text is shuffled below anyway).
    for category in sorted(false_categories, key=CATEGORIES[::-1].index):
        if not pick(category, False):
            raise ValueError(f"no false {category} claim left to make about this scene")
    for _ in range(n_true - (answered and said[0].true)):
        if not pick(None, True):
            raise ValueError(f"the scene has fewer than {n_true} true claims on distinct subjects")
    rest = said[1:] if answered else said
    rng.shuffle(rest)
    ordered = (said[:1] if answered else []) + rest

    parts = [rng.choice(LEAD_INS)]
    claims = []
    position = len(parts[0]) + 1
    for statement in ordered:
        claims.append(
            Claim(position, position + len(statement.text), statement.category, statement.true)
        )
        parts.append(statement.text)
        position += len(statement.text) + 1
    return Response(text=" ".join(parts), claims=tuple(claims))


# --- the oracle -----------------------------------------------------------------------------------

_WORD = r"([a-z]+)"
_OBJECT = re.compile(rf"There is (a|no) {_WORD} in the image\.")
_COUNT = re.compile(rf"There (is|are) {_WORD} {_WORD}\.")
_COLOUR = re.compile(rf"The {_WORD} ({'|'.join(PLACES.values())}) is {_WORD}\.")
_SIZE = re.compile(rf"The {_WORD} {_WORD} is (small|large)\.")
_PAIR = re.compile(
    rf"The {_WORD} {_WORD} is ({'|'.join(RELATIONS + COMPARISONS)}) the {_WORD} {_WORD}\."
)
_SENTENCE = re.compile(r"\S[^.]*\.")
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}


def _judge(scene: Scene, sentence: str) -> tuple[str, bool] | None:
    """(category, true) of one sentence, or None when it is not a claim of the grammar."""
    if m := _OBJECT.fullmatch(sentence):
        article, shape = m.groups()
        if shape not in SHAPES:
            return None
        return "object", (scene.count(shape) > 0) == (article == "a")
    if m := _COUNT.fullmatch(sentence):
        verb, number, noun = m.groups()
        n = NUMBERS.index(number) if number in NUMBERS else -1
        shape = noun if verb == "is" else _SINGULAR.get(noun, "")
        if shape not in SHAPES or n < 1 or (n == 1) != (verb == "is"):
            return None
        if not scene.count(shape):
            return "object", False
        return "count", scene.count(shape) == n
    if m := _COLOUR.fullmatch(sentence):
        shape, place, colour = m.groups()
        if shape not in SHAPES or colour not in COLOURS:
            return None
        cell = next(k for k, v in PLACES.items() if v == place)
        item = scene.at(*cell)
        if item is None or item.shape != shape:
            return "object", False
        return "attribute", item.colour == colour
    if m := _SIZE.fullmatch(sentence):
        colour, shape, size = m.groups()
        if colour not in COLOURS or shape not in SHAPES:
            return None
        item = scene.named(colour, shape)
        return ("object", False) if item is None else ("attribute", item.size == size)
    if m := _PAIR.fullmatch(sentence):
        colour_a, shape_a, link, colour_b, shape_b = m.groups()
        if not {colour_a, colour_b} <= set(COLOURS) or not {shape_a, shape_b} <= set(SHAPES):
            return None
        a, b = scene.named(colour_a, shape_a), scene.named(colour_b, shape_b)
        if a is None or b is None:
            return "object", False
        return ("relation" if link in RELATIONS else "comparison"), _link_holds(a, b, link)
    return None


def claims_of(scene: Scene, text: str) -> list[Claim]:
    """Every claim in `text` (sentences of the grammar), with its span, category and truth.

    Sentences outside the grammar are ignored, so a lead-in, or a human's free text around the
    claims, does not count. For a `respond` output this returns exactly its `claims`.
    """
    found = []
    for m in _SENTENCE.finditer(text):
        verdict = _judge(scene, m.group())
        if verdict is not None:
            found.append(Claim(m.start(), m.end(), verdict[0], verdict[1]))
    return found
