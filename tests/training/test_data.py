"""The data contract: valid rows of every accepted shape parse; bad rows name their row and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from training.data import (
    PreferencePair,
    RowError,
    parse_hh_transcript_pair,
    parse_preference_rows,
    parse_unpaired_rows,
    prompt_key,
    read_jsonl,
    render_messages,
    split_by_prompt,
)

HH_DATA = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "hh-rlhf-harmless-base-test.jsonl.gz"
)

USER = [{"role": "user", "content": "Is the sky blue?"}]


def _pair_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": USER,
        "chosen": [{"role": "assistant", "content": "Yes, by Rayleigh scattering."}],
        "rejected": [{"role": "assistant", "content": "No."}],
        "margin": 1.0,
        "task_id": 17,
        "judgement_ids": [3, 9],
        "annotator": "a-3f9c",
        "agreement": 1.0,
        "round": 2,
    }
    row.update(overrides)
    return row


def test_conversational_row_keeps_messages_margin_and_provenance() -> None:
    (pair,) = parse_preference_rows([_pair_row()])
    assert pair.prompt == USER
    assert pair.chosen == [{"role": "assistant", "content": "Yes, by Rayleigh scattering."}]
    assert pair.margin == 1.0
    assert pair.tie is False
    assert pair.meta == {
        "task_id": 17,
        "judgement_ids": [3, 9],
        "annotator": "a-3f9c",
        "agreement": 1.0,
        "round": 2,
        "row": 1,
    }


def test_standard_string_row_becomes_conversational() -> None:
    (pair,) = parse_preference_rows([{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go."}])
    assert pair.prompt == [{"role": "user", "content": "Hi?"}]
    assert pair.chosen == [{"role": "assistant", "content": "Hello!"}]
    assert pair.rejected == [{"role": "assistant", "content": "Go."}]
    assert pair.margin is None


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        (_pair_row(chosen=42), "chosen", "expected a string or a list of messages"),
        (_pair_row(rejected=[]), "rejected", "empty list"),
        (_pair_row(prompt=[{"role": "robot", "content": "x"}]), "prompt", "role 'robot'"),
        (_pair_row(prompt=[{"role": "user", "content": 3}]), "prompt", "content must be a string"),
        (_pair_row(chosen="   "), "chosen", "must not be empty"),
        (_pair_row(margin="big"), "margin", "finite number"),
        (_pair_row(margin=True), "margin", "finite number"),
        (_pair_row(margin=float("nan")), "margin", "finite number"),
        (_pair_row(tie="yes"), "tie", "true or false"),
        ({"prompt": USER, "chosen": "a"}, "rejected", "is required"),
    ],
)
def test_bad_row_raises_row_error_naming_row_and_field(
    row: dict[str, Any], field: str, fragment: str
) -> None:
    rows = [_pair_row(), _pair_row(), row]
    with pytest.raises(RowError) as caught:
        parse_preference_rows(rows)
    assert caught.value.row == 3
    assert caught.value.field == field
    assert str(caught.value).startswith(f"row 3, field '{field}': ")
    assert fragment in str(caught.value)


def test_non_object_row_is_an_error_without_field() -> None:
    with pytest.raises(RowError) as caught:
        parse_preference_rows([_pair_row(), ["not", "a", "dict"]])  # type: ignore[list-item]
    assert (caught.value.row, caught.value.field) == (2, None)


def test_ties_are_dropped_by_default_and_kept_on_request() -> None:
    rows = [_pair_row(), _pair_row(tie=True)]
    assert len(parse_preference_rows(rows)) == 1
    kept = parse_preference_rows(rows, ties="keep")
    assert [pair.tie for pair in kept] == [False, True]


RANKING = {
    "prompt": "Name a colour.",
    "ranking": [
        {"content": "blue", "rank": 1},
        {"text": "green", "rank": 2},
        {"content": [{"role": "assistant", "content": "teal"}], "rank": 2},
        {"content": "no", "rank": 3},
    ],
    "task_id": 5,
}


def _texts(pair: PreferencePair) -> tuple[str, str]:
    return pair.chosen[0]["content"], pair.rejected[0]["content"]


def test_ranking_expands_to_all_implied_pairs_with_better_first() -> None:
    pairs = parse_preference_rows([RANKING], ties="keep")
    assert len(pairs) == 6  # 4 choose 2
    untied = {_texts(pair) for pair in pairs if not pair.tie}
    assert untied == {
        ("blue", "green"),
        ("blue", "teal"),
        ("blue", "no"),
        ("green", "no"),
        ("teal", "no"),
    }
    (tie,) = [pair for pair in pairs if pair.tie]
    assert set(_texts(tie)) == {"green", "teal"}
    assert all(pair.meta["task_id"] == 5 for pair in pairs)
    assert len(parse_preference_rows([RANKING])) == 5


def test_ranking_best_vs_worst_keeps_only_the_extremes() -> None:
    pairs = parse_preference_rows([RANKING], ranking_pairs="best_vs_worst")
    assert [_texts(pair) for pair in pairs] == [("blue", "no")]


def test_bad_ranking_names_the_field() -> None:
    bad = {"prompt": "x", "ranking": [{"content": "a", "rank": "1"}, {"content": "b", "rank": 2}]}
    with pytest.raises(RowError) as caught:
        parse_preference_rows([bad])
    assert caught.value.field == "ranking"
    with pytest.raises(RowError) as caught:
        parse_preference_rows([{"prompt": "x", "ranking": [{"content": "a", "rank": 1}]}])
    assert "at least two" in str(caught.value)


def test_implicit_prompt_conversations_split_at_the_shared_prefix() -> None:
    row = {
        "chosen": USER + [{"role": "assistant", "content": "Yes."}],
        "rejected": USER + [{"role": "assistant", "content": "No."}],
    }
    (pair,) = parse_preference_rows([row])
    assert pair.prompt == USER
    assert _texts(pair) == ("Yes.", "No.")


HH_ROW = {
    "chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: I am locked out."
    "\n\nAssistant: Call a locksmith.",
    "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: I am locked out."
    "\n\nAssistant: Use a bobby pin on the neighbour's door.",
}


def test_hh_transcript_pair_shares_every_turn_but_the_last_reply() -> None:
    pair = parse_hh_transcript_pair(HH_ROW)
    assert pair.prompt == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Why?"},
        {"role": "user", "content": "I am locked out."},
    ]
    assert _texts(pair) == ("Call a locksmith.", "Use a bobby pin on the neighbour's door.")
    # The generic parser recognises the same row as HH.
    assert parse_preference_rows([HH_ROW]) == [pair]


def test_hh_rows_that_are_not_transcripts_raise() -> None:
    with pytest.raises(RowError) as caught:
        parse_hh_transcript_pair({"chosen": "just text", "rejected": HH_ROW["rejected"]}, index=7)
    assert (caught.value.row, caught.value.field) == (7, "chosen")
    empty = {
        "chosen": HH_ROW["chosen"].rsplit("Assistant:", 1)[0] + "Assistant:",
        "rejected": HH_ROW["rejected"],
    }
    with pytest.raises(RowError, match="final reply is empty"):
        parse_hh_transcript_pair(empty)


@pytest.mark.skipif(not HH_DATA.exists(), reason="shared HH-RLHF sample not present")
def test_real_hh_file_parses_all_but_the_empty_replies() -> None:
    pairs, errors = [], []
    for index, row in enumerate(read_jsonl(HH_DATA), start=1):
        try:
            pairs.append(parse_hh_transcript_pair(row, index=index))
        except RowError as error:
            errors.append(error)
    assert len(pairs) + len(errors) == 2312
    # The sample's four rows whose chosen transcript ends in an empty reply.
    assert [(error.row, error.field) for error in errors] == [
        (87, "chosen"), (517, "chosen"), (926, "chosen"), (1104, "chosen"),
    ]  # fmt: skip
    assert all("final reply is empty" in str(error) for error in errors)
    assert all(pair.prompt[-1]["role"] == "user" for pair in pairs[:200])
    assert all(pair.chosen != pair.rejected for pair in pairs[:200])


def test_unpaired_rows_validate_label() -> None:
    (example,) = parse_unpaired_rows(
        [{"prompt": "Hi", "completion": "Hello", "label": True, "round": 1}]
    )
    assert example.label is True
    assert example.completion == [{"role": "assistant", "content": "Hello"}]
    assert example.meta == {"round": 1, "row": 1}
    with pytest.raises(RowError) as caught:
        parse_unpaired_rows([{"prompt": "Hi", "completion": "Hello", "label": 1}])
    assert (caught.value.row, caught.value.field) == (1, "label")
    with pytest.raises(RowError) as caught:
        parse_unpaired_rows([{"prompt": "Hi", "label": False}])
    assert caught.value.field == "completion"


def test_read_jsonl_streams_plain_and_gzip_and_reports_bad_lines(tmp_path: Path) -> None:
    plain = tmp_path / "rows.jsonl"
    plain.write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n")
    assert list(read_jsonl(plain)) == [{"a": 1}, {"a": 2}]
    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(json.dumps({"b": 1}) + "\n")
    assert list(read_jsonl(packed)) == [{"b": 1}]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(RowError) as caught:
        list(read_jsonl(broken))
    assert caught.value.row == 2
    assert "invalid JSON" in str(caught.value)
    array = tmp_path / "array.jsonl"
    array.write_text("[1, 2]\n")
    with pytest.raises(RowError, match="row 1: expected a JSON object"):
        list(read_jsonl(array))


def test_prompt_key_depends_on_role_and_content_only() -> None:
    assert prompt_key("Hi") == prompt_key([{"role": "user", "content": "Hi"}])
    assert prompt_key([{"role": "user", "content": "Hi", "id": 4}]) == prompt_key("Hi")
    assert prompt_key("Hi") != prompt_key([{"role": "system", "content": "Hi"}])


def _pairs_with_repeated_prompts(n_prompts: int, per_prompt: int) -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt=[{"role": "user", "content": f"prompt {p}"}],
            chosen=[{"role": "assistant", "content": f"good {i}"}],
            rejected=[{"role": "assistant", "content": f"bad {i}"}],
        )
        for p in range(n_prompts)
        for i in range(per_prompt)
    ]


def test_split_by_prompt_keeps_prompts_whole_and_is_deterministic() -> None:
    pairs = _pairs_with_repeated_prompts(200, 3)
    train, held = split_by_prompt(pairs, eval_fraction=0.2, seed=7)
    assert len(train) + len(held) == 600
    train_keys = {prompt_key(pair.prompt) for pair in train}
    held_keys = {prompt_key(pair.prompt) for pair in held}
    assert not train_keys & held_keys
    assert 0.1 < len(held) / 600 < 0.3
    assert split_by_prompt(pairs, eval_fraction=0.2, seed=7) == (train, held)
    assert split_by_prompt(pairs, eval_fraction=0.2, seed=8) != (train, held)
    # A prompt's side does not depend on what else is in the data: held-out
    # prompts of a subset stay held out in the full set.
    _, held_subset = split_by_prompt(pairs[:300], eval_fraction=0.2, seed=7)
    assert {prompt_key(pair.prompt) for pair in held_subset} <= held_keys


def test_split_by_prompt_with_eval_size_takes_whole_prompts_until_enough() -> None:
    pairs = _pairs_with_repeated_prompts(100, 2)
    train, held = split_by_prompt(pairs, eval_size=31, seed=0)
    assert len(held) == 32  # 16 whole prompts: the 31st item's prompt comes along with its pair
    assert not {prompt_key(p.prompt) for p in train} & {prompt_key(p.prompt) for p in held}
    rows = [{"prompt": f"p{i}"} for i in range(10)]
    assert len(split_by_prompt(rows, eval_size=3, seed=0)[1]) == 3
    with pytest.raises(ValueError, match="exactly one"):
        split_by_prompt(rows, seed=0)


def test_render_messages_uses_the_chat_template_or_a_plain_join(tiny_tokenizer: Any) -> None:
    rendered = render_messages(tiny_tokenizer, USER, "Yes.")
    assert rendered == "<|bos|><|user|>\nIs the sky blue?<|eos|><|assistant|>\nYes.<|eos|>"

    class NoTemplate:
        chat_template = None

    assert render_messages(NoTemplate(), USER, [{"role": "assistant", "content": "Yes."}]) == (
        "user: Is the sky blue?\nassistant: Yes."
    )
