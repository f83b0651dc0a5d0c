"""The hindsight import line (annotation/kinds/hindsight/lines.py) through the core's parse_line,
and the page form's payload."""

import json

import pytest

from annotation.kinds import kind_for
from annotation.services.import_lines import LineError, parse_line

KIND = kind_for("hindsight")


def parse(line: dict):
    return parse_line(json.dumps(line), line=7, kind=KIND)


def test_outcomes_and_hidden_facts_are_read():
    item = parse(
        {
            "prompt": "Which one?",
            "responses": [{"text": "X", "outcome": "X broke."}, {"text": "Y", "outcome": " Y ok "}],
            "hidden": {"x": {"works": False}},
            "metadata": {"true_utility": [-1, 0.5]},
        }
    )
    assert item.outcomes == ("X broke.", "Y ok")
    assert item.hidden == {"x": {"works": False}}
    assert item.responses == [("X", ""), ("Y", "")]
    bare = parse({"prompt": "Which one?", "responses": ["X"], "hidden": {"x": 1}})
    assert (bare.outcomes, bare.hidden) == ((), {"x": 1})
    prompt_only = parse({"prompt": "Which one?", "responses": []})  # for the loop to answer
    assert (prompt_only.outcomes, prompt_only.hidden) == ((), {})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"prompt": "p", "responses": [{"text": "X", "outcome": "o"}, "Y"]},
            "responses[1].outcome: missing",
        ),
        (
            {"prompt": "p", "responses": [{"text": "X"}, {"text": "Y", "outcome": "o"}]},
            "responses[0].outcome: missing",
        ),
        (
            {
                "prompt": "p",
                "responses": [{"text": "X", "outcome": " "}, {"text": "Y", "outcome": "o"}],
            },
            "responses[0].outcome: missing",
        ),
        (
            {"prompt": "p", "responses": [{"text": "X", "outcome": 3}]},
            "responses[0].outcome: must be a string",
        ),
        ({"prompt": "p", "responses": ["X"], "hidden": ["facts"]}, "hidden: must be an object"),
        (
            {"prompt": "p", "responses": ["X", "Y"], "metadata": {"true_utility": [1]}},
            "metadata.true_utility: must be a list of numbers, one per response",
        ),
        (
            {"prompt": "p", "responses": ["X"], "context": {"c": 1}},
            "context: a hindsight task shows no",
        ),
        (
            {"prompt": "p", "responses": ["X", "Y", "Z"]},
            "responses: this project's kind takes 1 to 2",
        ),
    ],
)
def test_refused_lines_name_the_field(line, message):
    with pytest.raises(LineError) as refused:
        parse(line)
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_page_form_becomes_the_rest_body():
    post = {"phase": "hindsight", "rating_0": "4", "rating_1": " 2 ", "choice": "B", "reason": "r"}
    assert KIND.payload_from_form(post) == {
        "phase": "hindsight",
        "ratings": [4, 2],
        "choice": "B",
        "reason": "r",
    }
    assert KIND.payload_from_form({"phase": "foresight", "rating_0": "5"})["ratings"] == [5]


def test_a_line_with_neither_outcomes_nor_hidden_facts_is_refused_naming_it():
    with pytest.raises(LineError) as refused:
        parse({"prompt": "Which?", "responses": ["A.", "B."]})
    assert "no outcomes and no hidden facts" in str(refused.value)
