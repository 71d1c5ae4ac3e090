"""Prompt files (.txt, .jsonl, .json), prompt ids, and the seeded prompt cursor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unirl_stream.api import UserInputError
from unirl_stream.data import PromptCursor, load_prompts


def test_txt_skips_blank_lines_and_numbers_prompts(tmp_path: Path) -> None:
    path = tmp_path / "cats.txt"
    path.write_text("\ufeffa cat\n\n  a dog  \n\na bird\n", encoding="utf-8")
    prompts = load_prompts(path)
    assert [(p.id, p.text, p.extra) for p in prompts] == [
        ("cats:0", "a cat", {}), ("cats:1", "a dog", {}), ("cats:2", "a bird", {})
    ]


def test_jsonl_keeps_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "ocr.jsonl"
    rows = [{"prompt": "a sign saying OPEN", "text": "OPEN"}, {"prompt": "a red door"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    prompts = load_prompts(path)
    assert [(p.id, p.text, p.extra) for p in prompts] == [
        ("ocr:0", "a sign saying OPEN", {"text": "OPEN"}), ("ocr:1", "a red door", {})
    ]


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"prompt": "x", "seed": 3}]))
    (p,) = load_prompts(path)
    assert (p.id, p.text, p.extra) == ("set:0", "x", {"seed": 3})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', r"bad\.jsonl:2: malformed JSON line"),
        ("noprompt.jsonl", '{"text": "x"}\n', r"entry 1: expected an object with a non-empty string 'prompt'"),
        ("obj.json", '{"prompt": "x"}', r"expected a JSON array"),
        ("bad.json", "[{", r"malformed JSON"),
        ("empty.txt", "\n\n  \n", r"no prompts in file"),
        ("prompts.csv", "a,b\n", r"unsupported prompt file type '\.csv'"),
    ],
)
def test_bad_prompt_files(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserInputError, match=message):
        load_prompts(path)


def test_missing_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="prompt file not found"):
        load_prompts(tmp_path / "none.txt")
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserInputError, match="not UTF-8"):
        load_prompts(path)


def test_cursor_visits_each_prompt_once_per_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("\n".join(f"prompt {i}" for i in range(10)))
    prompts = load_prompts(path)
    cursor = PromptCursor(prompts, seed=7)
    first = [cursor.take()[1].id for _ in range(10)]
    second = [cursor.take()[1].id for _ in range(10)]
    assert sorted(first) == sorted(second) == sorted(p.id for p in prompts)
    assert first != second  # reshuffled each epoch
    assert first != [p.id for p in prompts]  # shuffled at all
    # the state is one int: a cursor restored at position 13 continues identically
    again = PromptCursor(prompts, seed=7, position=13)
    assert [again.take()[1].id for _ in range(7)] == second[3:]
    other_seed = PromptCursor(prompts, seed=8)
    assert [other_seed.take()[1].id for _ in range(10)] != first
    ordered = PromptCursor(prompts, seed=7, shuffle=False)
    assert [ordered.take()[1].id for _ in range(12)] == [f"p:{i % 10}" for i in range(12)]
