"""docs/recipes.md is generated from the Structs and must match the generator's output."""

from __future__ import annotations

from pathlib import Path

from msgspec import inspect as mi

from unirl_stream import docs
from unirl_stream.recipe import Recipe
from unirl_stream.storage.config import StoreConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def test_recipes_md_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == docs.render(), (
        "docs/recipes.md is stale: run `python -m unirl_stream.docs` and commit the result"
    )


def _tables() -> list[tuple[str, mi.StructType]]:
    root = mi.type_info(Recipe)
    assert isinstance(root, mi.StructType)
    return [("[top]", root), *docs.walk(root)]


def test_every_recipe_key_is_documented_with_a_meaning() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for table, st in _tables():
        if table != "[top]":
            assert f"`{table}`" in text, table
        for f in st.fields:
            if f.name == "source":
                continue
            if not docs.meaning(st.cls, f):
                missing.append(f"{st.cls.__name__}.{f.name}")
            assert f"| `{f.name}` |" in text
    assert not missing, f"add an attribute docstring under these fields: {missing}"


def test_attribute_docstrings_are_read_from_source() -> None:
    assert docs.field_doc(StoreConfig, "budget_mb").startswith("Payload byte budget in MiB")
    assert docs.field_doc(StoreConfig, "no_such_field") == ""


def test_types_defaults_and_constraints_are_rendered() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "| `max_staleness` | int | `1` | >= 0 |" in text
    assert "| `height` | int | `480` | >= 16, multiple of 16 |" in text
    assert '| `dtype` | one of `"bfloat16"`, `"float16"`, `"float32"` | `"float32"` |' in text
    assert "| `path` | string | **required** |" in text
    assert "| `boundary_ratio` | float (may be unset) | unset | >= 0, <= 1 |" in text
    assert "`[[reward]]`" in text and "`[pipeline.stages.placement]`" in text


def test_check_mode(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "recipes.md"
    monkeypatch.setattr(docs, "OUTPUT", out)
    assert docs.main(["--check"]) == 1
    assert docs.main([]) == 0 and out.read_text() == docs.render()
    assert docs.main(["--check"]) == 0
