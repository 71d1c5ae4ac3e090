"""The table of supported models in docs/models.md, generated from the model plugins.

Each flow plugin carries a ``card`` (layouts, LoRA targets, text encoders, schedule, recipe);
``python -m unirl_stream.models.zoo`` rewrites docs/models.md and tests check it is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

from unirl_stream import registry

OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "models.md"
COLUMNS = ("layouts", "text encoders", "LoRA targets", "schedule", "learning test", "recipe")
HEAD = """# Supported models

Generated from the model plugins' cards (`python -m unirl_stream.models.zoo`); every plugin
here is a subclass of the shared flow-matching core (`unirl_stream/models/flow.py`) and is
tested on CPU with a tiny random-weight model of its real architecture
(`tiny:<layout>`, built from `unirl_stream/models/`): the saved model loads through the
real loader, replay reproduces the rollout's log-probs within 1e-5 in fp32 (with CFG where
the model uses it), and geometries the model refuses fail validation (exit 2). The "learning
test" column says where a cheap reward is shown to rise with a margin over seed noise.
"""


def render() -> str:
    lines = [HEAD, "| plugin | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for info in registry.info("models"):
        if not info.target.startswith("unirl_stream."):
            continue  # third-party plugins document themselves
        card = getattr(registry.load("models", info.name), "card", None)
        if card is not None:
            lines.append(f"| `{info.name}` | " + " | ".join(card[c] for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        return 0 if OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
