"""Prompt files: .txt (one prompt a line), .jsonl / .json (objects with a ``prompt``)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from unirl_stream.api import Prompt, UserInputError


def load_prompts(path: str | Path) -> list[Prompt]:
    """All prompts of a file, ids ``{stem}:{index}`` (index = position among prompts)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text: {e}") from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    elif suffix == ".jsonl":
        rows = [_row(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}: malformed JSON: {e}") from None
        if not isinstance(data, list):
            raise UserInputError(f"{path}: expected a JSON array of objects with a 'prompt'")
        rows = [_check(r, path, n) for n, r in enumerate(data, 1)]
    else:
        raise UserInputError(f"{path}: unsupported prompt file type {suffix!r} (.txt, .jsonl, .json)")
    if not rows:
        raise UserInputError(f"{path}: no prompts in file")
    stem = path.stem
    return [
        Prompt(id=f"{stem}:{i}", text=r["prompt"], extra={k: v for k, v in r.items() if k != "prompt"})
        for i, r in enumerate(rows)
    ]


def _row(line: str, path: Path, n: int) -> dict:
    try:
        return _check(json.loads(line), path, n)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}:{n}: malformed JSON line: {e}") from None


def _check(row: object, path: Path, n: int) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise UserInputError(f"{path}: entry {n}: expected an object with a non-empty string 'prompt'")
    return row


class PromptCursor:
    """Endless seeded walk over prompts; its state is one int, so it checkpoints cheaply.

    Position ``n`` maps to (epoch, offset); each epoch is a fresh seeded permutation, so
    every producer that shares the cursor position sees the same order.
    """

    def __init__(self, prompts: list[Prompt], seed: int, shuffle: bool = True, position: int = 0):
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        self._epoch = -1
        self._order: list[int] = []

    def at(self, n: int) -> Prompt:
        epoch, offset = divmod(n, len(self.prompts))
        if epoch != self._epoch:
            self._order = list(range(len(self.prompts)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self.prompts[self._order[offset]]

    def take(self) -> tuple[int, Prompt]:
        n = self.position
        self.position += 1
        return n, self.at(n)

    def __iter__(self) -> Iterator[tuple[int, Prompt]]:
        while True:
            yield self.take()
