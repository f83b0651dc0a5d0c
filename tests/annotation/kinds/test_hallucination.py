"""The hallucination kind's rules: settings, import-line fields, payload, form, keys, stats."""

import json

import pytest

from annotation.errors import InvalidInput
from annotation.kinds import kind_for
from annotation.kinds.base import TaskContext
from annotation.kinds.hallucination import KEYS, Hallucination, category_keys
from annotation.kinds.hallucination.payload import DEFAULT_CATEGORIES, MAX_SPANS
from annotation.kinds.hallucination.stats import category_rates, hallucination_counts, span_f1

KIND = kind_for("hallucination")
A = "There are three red cubes. A dog sits on the left."
B = "Two cubes are blue 🐶. The café is open."
TASK = TaskContext(responses=(A, B), settings=KIND.default_settings())


def field_of(excinfo) -> str:
    return excinfo.value.errors[0]["field"]


def validate(data, task=TASK):
    return KIND.validate_payload(data, task=task)


# --- settings ---------------------------------------------------------------------------------


def test_default_settings_are_mmhal_categories_with_context_shown():
    assert isinstance(KIND, Hallucination)
    assert KIND.clean_settings(None) == {
        "categories": list(DEFAULT_CATEGORIES),
        "show_context": True,
    }
    assert KIND.clean_settings({}) == KIND.default_settings()
    assert KIND.clean_settings({"show_context": False})["show_context"] is False
    assert KIND.clean_settings({"categories": ["object", "count-2", "a_b"]})["categories"] == [
        "object",
        "count-2",
        "a_b",
    ]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"colour": True}, "kind_settings.colour"),
        ({"show_context": "yes"}, "kind_settings.show_context"),
        ({"categories": []}, "kind_settings.categories"),
        ({"categories": "object"}, "kind_settings.categories"),
        ({"categories": [f"c{i}" for i in range(21)]}, "kind_settings.categories"),
        ({"categories": ["object", "object"]}, "kind_settings.categories[1]"),
        ({"categories": ["ok", ""]}, "kind_settings.categories[1]"),
        ({"categories": ["Object"]}, "kind_settings.categories[0]"),
        ({"categories": ["x" * 33]}, "kind_settings.categories[0]"),
        ({"categories": ["<b>"]}, "kind_settings.categories[0]"),
        ({"categories": [3]}, "kind_settings.categories[0]"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(settings, field):
    with pytest.raises(InvalidInput) as excinfo:
        KIND.clean_settings(settings)
    assert field_of(excinfo) == field


def test_settings_that_are_not_an_object_are_refused():
    with pytest.raises(InvalidInput):
        KIND.clean_settings(["object"])


# --- import line ------------------------------------------------------------------------------

SHA = "sha256:" + "ab" * 32


def test_line_extras_keep_the_image_reference_and_context():
    extras = KIND.line_extras(
        {
            "prompt": "How many cubes?",
            "image": "scenes/0001.png",
            "context": {"captions": ["three red cubes"], "choices": ["2", "3"], "answer": "3"},
        }
    )
    assert extras.image == "scenes/0001.png"
    assert extras.context == {"captions": ["three red cubes"], "choices": ["2", "3"], "answer": "3"}
    assert KIND.line_extras({"prompt": "q", "image": SHA}).image == SHA
    assert KIND.line_extras({"prompt": "q", "image": "a..b.png"}).image == "a..b.png"


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"prompt": "q"}, "image"),
        ({"prompt": "q", "image": ""}, "image"),
        ({"prompt": "q", "image": 7}, "image"),
        ({"prompt": "q", "image": "sha256:" + "AB" * 32}, "image"),
        ({"prompt": "q", "image": "sha256:abc"}, "image"),
        ({"prompt": "q", "image": "/etc/passwd"}, "image"),
        ({"prompt": "q", "image": "../secret.png"}, "image"),
        ({"prompt": "q", "image": "a/../../b.png"}, "image"),
        ({"prompt": "q", "image": "a\\b.png"}, "image"),
        ({"prompt": "q", "image": "a\x00.png"}, "image"),
        ({"prompt": "q", "image": "a//b.png"}, "image"),
        ({"prompt": "q", "image": "x" * 301}, "image"),
        ({"prompt": "q", "image": SHA, "context": "captions"}, "context"),
        ({"prompt": "q", "image": SHA, "context": {"url": "http://x"}}, "context.url"),
        ({"prompt": "q", "image": SHA, "context": {"captions": "one"}}, "context.captions"),
        ({"prompt": "q", "image": SHA, "context": {"captions": [1]}}, "context.captions[0]"),
        (
            {"prompt": "q", "image": SHA, "context": {"reference": "x" * 10_001}},
            "context.reference",
        ),
        ({"prompt": "q", "image": SHA, "context": {"answer": "\ud800"}}, "context.answer"),
        ({"prompt": "q", "image": SHA, "context": {"choices": ["c"] * 27}}, "context.choices"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "image": SHA,
            },
            "prompt[1].role",
        ),
    ],
)
def test_bad_line_fields_are_refused_naming_the_field(line, field):
    with pytest.raises(InvalidInput) as excinfo:
        KIND.line_extras(line)
    assert str(excinfo.value).startswith(f"{field}:")


# --- payload ----------------------------------------------------------------------------------


def test_a_decisive_choice_with_spans_and_a_correction():
    payload, key = validate(
        {
            "choice": "B",
            "spans": [
                {"response": 0, "start": 27, "end": 32, "category": "object", "note": "no dog"},
                {"response": 0, "start": 10, "end": 15, "category": "count"},
            ],
            "correction": {"response": 0, "text": "There are two blue cubes."},
        }
    )
    assert key == "B"
    assert payload == {
        "choice": "B",
        "helpful_choice": None,
        # Stored sorted by (response, start), whatever order they came in.
        "spans": [
            {"response": 0, "start": 10, "end": 15, "category": "count"},
            {"response": 0, "start": 27, "end": 32, "category": "object", "note": "no dog"},
        ],
        "correction": {"response": 0, "text": "There are two blue cubes."},
    }
    assert A[10:15] == "three" and A[27:32] == "A dog"


@pytest.mark.parametrize(("helpful", "key"), [("A", "tie:A"), ("B", "tie:B"), ("tie", "tie")])
def test_a_tie_needs_the_helpful_choice_and_keys_agreement_on_both(helpful, key):
    payload, answer = validate({"choice": "tie", "helpful_choice": helpful})
    assert answer == key and payload["helpful_choice"] == helpful
    assert payload["spans"] == [] and payload["correction"] is None


def one_span(**changes):
    """A payload with one span: a valid one, changed by `changes` (None removes a field)."""
    item = {"response": 0, "start": 0, "end": 1, "category": "object", **changes}
    return {"choice": "A", "spans": [{k: v for k, v in item.items() if v is not None}]}


def fix(**correction):
    return {"choice": "A", "correction": correction}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "choice"),
        ({"choice": "both_bad"}, "choice"),
        ({"choice": "tie"}, "helpful_choice"),
        ({"choice": "tie", "helpful_choice": "C"}, "helpful_choice"),
        # A helpfulness verdict after a decisive choice would be silently dropped: refused.
        ({"choice": "A", "helpful_choice": "B"}, "helpful_choice"),
        ({"choice": "A", "spans": "[]"}, "spans"),
        ({"choice": "A", "spans": one_span()["spans"] * (MAX_SPANS + 1)}, "spans"),
        ({"choice": "A", "spans": ["x"]}, "spans[0]"),
        (one_span(response=2), "spans[0].response"),
        (one_span(response=True), "spans[0].response"),
        (one_span(start=False), "spans[0].start"),
        (one_span(start=1.0, end=2), "spans[0].start"),
        (one_span(start="1", end=2), "spans[0].start"),
        (one_span(start=-1, end=2), "spans[0].start"),
        (one_span(start=3, end=3), "spans[0].end"),
        (one_span(start=3, end=2), "spans[0].end"),
        (one_span(response=1, end=len(B) + 1), "spans[0].end"),
        (one_span(response=1, start=len(B), end=len(B) + 1), "spans[0].start"),
        (one_span(category="colour"), "spans[0].category"),
        (one_span(category=None), "spans[0].category"),
        (one_span(note=5), "spans[0].note"),
        (one_span(note="x" * 1001), "spans[0].note"),
        (one_span(note="a\x00"), "spans[0].note"),
        (one_span(note="\udc00"), "spans[0].note"),
        (one_span(colour="red"), "spans[0].colour"),
        ({"choice": "A", "correction": "fixed"}, "correction"),
        (fix(response=0, text=""), "correction.text"),
        (fix(response=0, text="   "), "correction.text"),
        (fix(response=0, text=A), "correction.text"),
        (fix(response=0, text="x" * 200_001), "correction.text"),
        (fix(response=0, text="a\x00b"), "correction.text"),
        (fix(response=3, text="new"), "correction.response"),
        (fix(response=0, text="new", why="x"), "correction.why"),
    ],
)
def test_bad_payloads_are_refused_naming_the_field(data, field):
    with pytest.raises(InvalidInput) as excinfo:
        validate(data)
    assert field_of(excinfo) == field
    assert str(excinfo.value).startswith(f"{field}: ")


def test_overlapping_spans_are_refused_naming_the_later_span():
    spans = [
        {"response": 1, "start": 0, "end": 9, "category": "count"},
        {"response": 0, "start": 10, "end": 20, "category": "count"},
        {"response": 1, "start": 20, "end": 25, "category": "object"},
        {"response": 0, "start": 15, "end": 16, "category": "attribute"},
    ]
    with pytest.raises(InvalidInput) as excinfo:
        validate({"choice": "A", "spans": spans})
    assert field_of(excinfo) == "spans[3].start"
    assert "overlaps spans[1] (10-20) in response 0" in str(excinfo.value)
    # Touching spans (half-open) and the same offsets in the other response are no overlap.
    ok = [spans[0], spans[1], {"response": 1, "start": 9, "end": 12, "category": "other"}]
    assert len(validate({"choice": "A", "spans": ok})[0]["spans"]) == 3


def test_offsets_count_code_points_emoji_and_combining_marks_included():
    # "🐶" is one code point (two UTF-16 units, four UTF-8 bytes); "é" below is e + U+0301.
    text = "A 🐶 and a cafe\u0301 👨\u200d👩\u200d👧 here."
    task = TaskContext(responses=(text, "other"), settings=KIND.default_settings())
    dog = text.index("🐶")
    cafe = text.index("cafe")
    family = text.index("👨")
    family_end = family + 5  # man ZWJ woman ZWJ girl
    payload, _ = KIND.validate_payload(
        {
            "choice": "B",
            "spans": [
                {"response": 0, "start": dog, "end": dog + 1, "category": "object"},
                {"response": 0, "start": cafe, "end": cafe + 5, "category": "environment"},
                {"response": 0, "start": family, "end": family_end, "category": "count"},
            ],
        },
        task=task,
    )
    assert [text[s["start"] : s["end"]] for s in payload["spans"]] == [
        "🐶",
        "cafe\u0301",
        "👨\u200d👩\u200d👧",
    ]
    # A span edge inside "é" (between e and its accent) or inside the ZWJ family is refused.
    for start, end, field in (
        (cafe, cafe + 4, "spans[0].end"),
        (cafe + 4, cafe + 5, "spans[0].start"),
        (family, family + 1, "spans[0].end"),
        (family + 2, family_end, "spans[0].start"),
    ):
        with pytest.raises(InvalidInput) as excinfo:
            KIND.validate_payload(
                {
                    "choice": "B",
                    "spans": [{"response": 0, "start": start, "end": end, "category": "other"}],
                },
                task=task,
            )
        assert field_of(excinfo) == field
    # The code-point length is the bound, not the UTF-16 length a browser reports.
    with pytest.raises(InvalidInput) as excinfo:
        KIND.validate_payload(
            {
                "choice": "B",
                "spans": [
                    {
                        "response": 0,
                        "start": 0,
                        "end": len(text.encode("utf-16-le")) // 2,
                        "category": "other",
                    }
                ],
            },
            task=task,
        )
    assert field_of(excinfo) == "spans[0].end"


def test_categories_are_the_projects():
    settings = KIND.clean_settings({"categories": ["colour", "shape"]})
    task = TaskContext(responses=(A, B), settings=settings)
    payload, _ = validate(
        {"choice": "A", "spans": [{"response": 0, "start": 0, "end": 5, "category": "colour"}]},
        task,
    )
    assert payload["spans"][0]["category"] == "colour"
    with pytest.raises(InvalidInput, match="must be one of colour, shape"):
        validate(
            {"choice": "A", "spans": [{"response": 0, "start": 0, "end": 5, "category": "object"}]},
            task,
        )


# --- the page form ----------------------------------------------------------------------------


def test_the_form_posts_spans_as_json_and_the_correction_as_two_fields():
    spans = [{"response": 1, "start": 0, "end": 3, "category": "count"}]
    data = KIND.payload_from_form(
        {
            "choice": "tie",
            "helpful_choice": "B",
            "spans": json.dumps(spans),
            "correction_response": "1",
            "correction_text": "One cube is blue.",
        }
    )
    assert data == {
        "choice": "tie",
        "helpful_choice": "B",
        "spans": spans,
        "correction": {"response": 1, "text": "One cube is blue."},
    }
    payload, key = validate(data)
    assert key == "tie:B" and payload["correction"]["response"] == 1
    # The helpful radios keep their value when a tie is changed into A: it is not sent on.
    plain = KIND.payload_from_form(
        {
            "choice": "A",
            "helpful_choice": "B",
            "spans": "",
            "correction_response": "",
            "correction_text": "x",
        }
    )
    assert plain == {"choice": "A"}
    assert validate(plain)[1] == "A"


@pytest.mark.parametrize(
    ("post", "field"),
    [
        ({"choice": "A", "spans": "[{"}, "spans"),
        ({"choice": "A", "spans": "[" * 100_000}, "spans"),
        ({"choice": "A", "spans": "[]" + " " * 500_000}, "spans"),
        (
            {"choice": "A", "correction_response": "2", "correction_text": "x"},
            "correction_response",
        ),
    ],
)
def test_bad_form_fields_are_refused_naming_the_field(post, field):
    with pytest.raises(InvalidInput) as excinfo:
        KIND.payload_from_form(post)
    assert field_of(excinfo) == field


# --- keys, extras, gold -----------------------------------------------------------------------


def test_keys_are_unique_and_leave_the_core_keys_alone():
    keys = [k.key for k in KIND.keys()]
    assert keys == [k.key for k in KEYS] and len(set(keys)) == len(keys)
    assert not set(keys) & {"r", "s", "i", "?", "Enter"}
    assert keys[:6] == ["1", "2", "3", "q", "w", "e"]


def test_category_keys_are_deterministic_and_never_clash():
    assert category_keys(DEFAULT_CATEGORIES) == [
        ("o", "object"),
        ("a", "attribute"),
        ("u", "count"),
        ("l", "relation"),
        ("m", "comparison"),
        ("n", "environment"),
        ("h", "holistic"),
        ("t", "other"),
    ]
    assert KIND.category_keys(KIND.default_settings()) == category_keys(DEFAULT_CATEGORIES)
    taken = {k.key for k in KEYS} | {"r", "s", "i", "?", "Enter"}
    # Twenty categories with no free letter of their own still find keys.
    many = [f"{c}{c}" for c in "cijkqrswxe"] + [f"x{i}" for i in range(10)]
    pairs = category_keys(many)
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == 20 and not set(keys) & taken
    assert keys[:6] == ["4", "5", "6", "7", "8", "9"] and pairs == category_keys(many)


def test_task_extras_name_the_image_by_hash_and_show_context_when_the_project_does():
    image = {"sha256": "ab" * 32, "format": "png", "width": 640, "height": 480}
    extras = KIND.task_extras(
        project_id=7, image=image, context={"captions": ["c"]}, settings=KIND.default_settings()
    )
    url = f"/api/v1/projects/7/images/sha256:{'ab' * 32}"
    assert extras == {
        "image": {"url": url, "thumb_url": f"{url}?size=thumb", "width": 640, "height": 480},
        "context": {"captions": ["c"]},
    }
    hidden = KIND.task_extras(
        project_id=7, image=image, context={"captions": ["c"]}, settings={"show_context": False}
    )
    assert "context" not in hidden


def test_gold_score_compares_both_verdicts():
    assert KIND.gold_score({"choice": "A"}, {"choice": "A"}) == 1.0
    assert KIND.gold_score({"choice": "tie", "helpful_choice": "A"}, {"choice": "A"}) == 0.0
    assert (
        KIND.gold_score(
            {"choice": "tie", "helpful_choice": "B"}, {"choice": "tie", "helpful_choice": "B"}
        )
        == 1.0
    )
    assert KIND.gold_score({"choice": "A"}, {}) is None


# --- stats ------------------------------------------------------------------------------------


def span(response, start, end, category="object"):
    return {"response": response, "start": start, "end": end, "category": category}


def test_hallucination_counts_and_mmhal_rates():
    payload = {
        "spans": [span(0, 0, 3), span(0, 5, 7, "count"), span(0, 9, 10), span(1, 0, 2, "count")]
    }
    assert hallucination_counts(payload) == {0: {"object": 2, "count": 1}, 1: {"count": 1}}
    assert hallucination_counts({"spans": []}) == {}
    per_response = [{"object": 2, "count": 1}, {"count": 1}, {}, {}]
    rates = category_rates(per_response, ["object", "count", "relation"])
    assert rates == {
        "responses": 4,
        "hallucinated": 0.5,
        "by_category": {"object": 0.25, "count": 0.5, "relation": 0.0},
    }
    assert category_rates([], ["object"]) == {
        "responses": 0,
        "hallucinated": None,
        "by_category": {"object": None},
    }


def test_span_f1_exact_and_overlap():
    a = [span(0, 0, 10), span(1, 5, 9, "count")]
    b = [span(0, 0, 10), span(1, 6, 9, "count")]
    assert span_f1(a, b, mode="exact") == pytest.approx(0.5)
    # 10 + 3 shared points of 14 and 13 marked.
    assert span_f1(a, b) == pytest.approx(2 * 13 / 27)
    assert span_f1(a, a) == 1.0 and span_f1(a, a, mode="exact") == 1.0
    assert span_f1(a, []) == 0.0
    assert span_f1([], []) is None and span_f1([], [], mode="exact") is None
    # Same offsets in the other response do not overlap.
    assert span_f1([span(0, 0, 4)], [span(1, 0, 4)]) == 0.0
    with pytest.raises(ValueError):
        span_f1(a, b, mode="fuzzy")
