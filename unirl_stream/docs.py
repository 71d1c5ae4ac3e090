"""Generate docs/recipes.md from the recipe Structs, so the reference cannot drift.

Types, defaults and constraints come from ``msgspec.inspect``; meanings come from the
attribute docstrings (a string literal right under a field) in each config module, read
with ``ast``. ``python -m unirl_stream.docs`` rewrites the file; ``--check`` exits 1 when
it is stale (the test suite runs the same comparison).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from functools import cache
from pathlib import Path

import msgspec
from msgspec import inspect as mi

from unirl_stream import registry
from unirl_stream.recipe import Recipe
from unirl_stream.tomlio import toml_value

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
_OUR_DIST = "unirl-stream"

# Meanings for fields whose Struct has no docstring under them (yet). A docstring in the
# config module always wins; tests require every key to have one or the other.
_FALLBACK: dict[str, str] = {
    "RunConfig.name": "Run name: letters, digits, `_`, `.`, `-`; names the run directory.",
    "RunConfig.seed": "Seed of prompt order, sampling noise and initial adapter weights.",
    "DataConfig.prompts": "Prompt file.",
    "LoggingConfig.wandb": "Log metrics to Weights & Biases (needs `wandb login`).",
    "LoggingConfig.wandb_project": "Weights & Biases project name.",
    "LoraConfig.enabled": "Train LoRA adapters (false: train nothing, e.g. to measure rollouts).",
    "LoraConfig.rank": "LoRA rank r.",
    "LoraConfig.alpha": "LoRA alpha; the adapter's update is scaled by alpha / rank.",
    "LoraConfig.dropout": "Dropout on the LoRA input during training.",
    "ModelConfig.dtype": "Weights and compute dtype.",
    "ModelConfig.max_sequence_length": "Text encoder token limit (longer prompts are cut).",
    "ModelConfig.gradient_checkpointing": "Recompute transformer activations in the backward "
    "pass: less memory, ~1.6x slower replay.",
    "ModelConfig.checkpoint_saves": "What checkpointing keeps from the forward: the attention "
    "kernels' outputs (not recomputed in the backward) or nothing.",
    "SamplingConfig.height": "Frame height in pixels.",
    "SamplingConfig.width": "Frame width in pixels.",
    "SamplingConfig.num_inference_steps": "Denoising steps per sample.",
    "SamplingConfig.negative_prompt": "Negative prompt for classifier-free guidance "
    "(unused at guidance 1.0).",
    "SamplingConfig.sde": "Which denoising steps are stochastic.",
    "SDEConfig.window_stride": "``mixgrpo_window``: steps the window moves each shift.",
    "AlgorithmConfig.lr": "AdamW learning rate.",
    "AlgorithmConfig.weight_decay": "AdamW weight decay.",
    "AlgorithmConfig.betas": "AdamW betas.",
    "AlgorithmConfig.max_grad_norm": "Gradient norm clip.",
    "AlgorithmConfig.clip_range": "PPO ratio clip: ratios outside [1 - c, 1 + c] get no gradient.",
    "AlgorithmConfig.adv_clip": "Clip advantages to [-c, c] (unset: no clip).",
    "RewardSpec.weight": "Weight of this reward in the sum that forms the training reward.",
    "StageSpec.workers": "Worker count of this stage.",
    "StageSpec.placement": "Ray resources of its workers.",
    "StageSpec.options": "Stage options, decoded by the stage's own ``Config`` Struct.",
    "PipelineConfig.rollout_workers": "Rollout producers (each holds a copy of the policy).",
    "PipelineConfig.reward_workers": "Reward actors.",
    "PipelineConfig.stages": "Extra plugin stages, e.g. a filter between reward and trainer.",
    "PipelineConfig.rollout": "Placement of rollout workers.",
    "PipelineConfig.reward": "Placement of reward workers.",
    "PipelineConfig.trainer": "Placement of the trainer.",
}

_SECTIONS: dict[str, str] = {
    "run": "What the run is called, its seed, where it writes and how long it trains.",
    "model": "The model plugin and its weights.",
    "model.lora": "LoRA adapters: the trainable weights.",
    "data": "Prompts.",
    "sampling": "Video geometry, the denoising schedule and the GRPO group size.",
    "sampling.sde": "Which denoising steps are stochastic (and therefore trained).",
    "algorithm": "The policy objective and optimizer.",
    "reward": "One table per reward; several rewards are summed with their weights.",
    "store": "The sample store that every stage reads and writes.",
    "pipeline": "Workers, staleness, batching and placement.",
    "logging": "Terminal, sample media, TensorBoard, Weights & Biases and Prometheus output.",
}


@cache
def _module_docs(path: str) -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} for every class in a source file."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        body = node.body
        for stmt, nxt in zip(body, body[1:] + [None], strict=True):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
        out[node.name] = docs
    return out


def field_doc(cls: type, name: str) -> str:
    """A field's meaning: its attribute docstring (searching base classes), else fallback."""
    for klass in cls.__mro__:
        try:
            source = inspect.getsourcefile(klass)
        except TypeError:
            continue
        if source and (doc := _module_docs(source).get(klass.__name__, {}).get(name)):
            return " ".join(doc.split())
    return _FALLBACK.get(f"{cls.__name__}.{name}", "")


def meaning(cls: type, f: mi.Field, prefix: str = "") -> str:
    """What a key means: its docstring; for a sub-table, also where it is described."""
    doc = field_doc(cls, f.name)
    inner, many = _nested(f.type)
    if inner is None:
        return doc
    name = f"{prefix}{f.name}"
    ref = f"See `{'[[' if many else '['}{name}{']]' if many else ']'}`."
    return " ".join(x for x in (doc or _SECTIONS.get(name, ""), ref) if x)


def type_name(t: mi.Type) -> str:
    if isinstance(t, mi.UnionType):
        parts = [type_name(x) for x in t.types if not isinstance(x, mi.NoneType)]
        optional = any(isinstance(x, mi.NoneType) for x in t.types)
        return " or ".join(parts) + (" (may be unset)" if optional else "")
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in t.values)
    if isinstance(t, mi.ListType):
        inner = t.item_type
        return "array of tables" if isinstance(inner, mi.StructType) else f"list of {type_name(inner)}"
    if isinstance(t, mi.TupleType):
        return "[" + ", ".join(type_name(x) for x in t.item_types) + "]"
    if isinstance(t, mi.DictType):
        return f"table of {type_name(t.value_type)}"
    simple = {mi.IntType: "int", mi.FloatType: "float", mi.StrType: "string", mi.BoolType: "bool"}
    for kind, name in simple.items():
        if isinstance(t, kind):
            return name
    if isinstance(t, mi.StructType):
        return "table"
    return "any"  # AnyType, and CustomType for ``object``: the plugin's Config decides


def constraints(t: mi.Type) -> str:
    if isinstance(t, mi.UnionType):
        return "; ".join(c for x in t.types if (c := constraints(x)))
    if isinstance(t, mi.TupleType):
        return "; ".join(f"[{i}] {c}" for i, x in enumerate(t.item_types) if (c := constraints(x)))
    out = []
    for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if (v := getattr(t, attr, None)) is not None:
            out.append(f"{sym} {v}")
    if (v := getattr(t, "multiple_of", None)) is not None:
        out.append(f"multiple of {v}")
    if (v := getattr(t, "min_length", None)) is not None:
        out.append(f"length >= {v}")
    if (v := getattr(t, "pattern", None)) is not None:
        out.append(f"matches `{v}`")
    return ", ".join(out)


def default_text(f: mi.Field) -> str:
    if f.required:
        return "**required**"
    value = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
    if value is None:
        return "unset"
    if isinstance(value, msgspec.Struct):
        return "(table)"
    return "`" + toml_value(msgspec.to_builtins(value)).replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def struct_table(st: mi.StructType, prefix: str = "") -> list[str]:
    lines = ["| key | type | default | constraints | meaning |", "|---|---|---|---|---|"]
    for f in st.fields:
        doc = _cell(meaning(st.cls, f, prefix))
        lines.append(
            f"| `{f.name}` | {_cell(type_name(f.type))} | {default_text(f)} "
            f"| {_cell(constraints(f.type))} | {doc} |"
        )
    return lines


def _nested(t: mi.Type) -> tuple[mi.StructType | None, bool]:
    """The Struct a field holds (and whether as an array of tables), if any."""
    if isinstance(t, mi.StructType):
        return t, False
    if isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
        return t.item_type, True
    return None, False


def walk(st: mi.StructType, prefix: str = "") -> list[tuple[str, mi.StructType]]:
    """(TOML table name, Struct) for every table under ``st``, depth first."""
    out: list[tuple[str, mi.StructType]] = []
    for f in st.fields:
        inner, many = _nested(f.type)
        if inner is None:
            continue
        name = f"{prefix}{f.name}"
        out.append((f"[[{name}]]" if many else f"[{name}]", inner))
        out.extend(walk(inner, name + "."))
    return out


def _without_source(root: mi.StructType) -> mi.StructType:
    # ``source`` is set by the loader, never written in a recipe.
    return mi.StructType(
        cls=root.cls, fields=tuple(f for f in root.fields if f.name != "source"),
        tag_field=root.tag_field, tag=root.tag, array_like=root.array_like,
        forbid_unknown_fields=root.forbid_unknown_fields,
    )


def _recipe_sections() -> list[str]:
    root = mi.type_info(Recipe)
    assert isinstance(root, mi.StructType)
    seen: dict[type, list[str]] = {}
    order: list[tuple[type, mi.StructType]] = []
    for name, st in walk(root):
        if st.cls not in seen:
            seen[st.cls] = []
            order.append((st.cls, st))
        seen[st.cls].append(name)
    lines: list[str] = ["", "## Top level", "", "Each key is a table (section) of its own."]
    lines += [""] + struct_table(_without_source(root))
    for cls, st in order:
        names = seen[cls]
        key = names[0].strip("[]")
        lines += ["", "## " + ", ".join(f"`{n}`" for n in names), ""]
        intro = _SECTIONS.get(key) or " ".join((inspect.getdoc(cls) or "").split())
        if intro:
            lines += [intro, ""]
        lines += struct_table(st, key + ".")
    return lines


def _plugin_sections() -> list[str]:
    lines = ["", "## Plugin options", ""]
    lines.append(
        "Each plugin decodes its own `options` table with its `Config` Struct. Built-in "
        "plugins of this distribution (third-party plugins document their own):"
    )
    for group in registry.GROUPS:
        for p in registry.info(group):
            if p.distribution != _OUR_DIST:
                continue
            lines += ["", f"### {group} / `{p.name}`", "", f"`{p.target}`", ""]
            lines += _plugin_options(p)
    return lines


def _plugin_options(p: registry.PluginInfo) -> list[str]:
    module = p.target.partition(":")[0]
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            return ["Not available in this build yet."]
        raise
    for attr in p.target.partition(":")[2].split("."):
        obj = getattr(obj, attr)
    config = getattr(obj, "Config", None)
    if config is None:
        return ["No options."]
    st = mi.type_info(config)
    assert isinstance(st, mi.StructType)
    return struct_table(st)


def render() -> str:
    head = [
        "# Recipe reference",
        "",
        "<!-- Generated by `python -m unirl_stream.docs` from the config Structs; do not edit. -->",
        "",
        "A recipe is one TOML file. Every key below is checked before anything starts:",
        "unknown keys, wrong types, missing required keys and out-of-range numbers fail with",
        "`<file>: <dotted.key>: <reason>` (exit code 2). Any key can be overridden from the",
        "command line, typed like the file: `--set pipeline.max_staleness=2`,",
        "`--set 'sampling.sde.fraction=[0.0, 0.5]'`, `--set reward.0.weight=2`.",
        "Relative paths (`data.prompts`) are relative to the recipe's folder.",
    ]
    text = "\n".join(head + _recipe_sections() + _plugin_sections()) + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run `python -m unirl_stream.docs`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

