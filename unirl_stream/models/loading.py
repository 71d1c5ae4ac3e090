"""Finding and loading Wan2.2 diffusers checkpoints.

``model.path`` is one of: a local diffusers folder; a hub id, resolved from the local Hugging
Face cache only (nothing is ever downloaded by a run); or ``tiny:<layout>``, the built-in tiny
random-weight model (built into the cache on first use, see ``tiny.py``).

The ``check_*`` functions are filesystem-only (no torch import) so the recipe validator can
name a missing folder before any actor starts. ``load_components`` uses the real
``from_pretrained`` of each component, exactly as for the published checkpoints.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unirl_stream.api import MissingWeightsError, UserInputError
from unirl_stream.models.tiny import TINY_PREFIX, resolve_model_path, tiny_config, tiny_layout

REQUIRED = ("tokenizer", "text_encoder", "vae", "transformer")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def download_hint(spec: str, local_dir: Path | None) -> str:
    """How to get the weights: a ``huggingface-cli download`` line for the matching repo."""
    if _HUB_ID.match(spec) and local_dir is None:
        repo = spec
    elif "ti2v" in spec.lower() or "5b" in spec.lower():
        repo = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    else:
        repo = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    where = f" --local-dir {local_dir}" if local_dir is not None else ""
    return f"get them with `huggingface-cli download {repo}{where}` (on a machine with network access)"


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # not in the local cache (or no hub library): say how to get it
        raise MissingWeightsError(
            f"{repo_id}: not a local folder and not in the local Hugging Face cache "
            f"({type(e).__name__}); {download_hint(repo_id, None)}, or set model.path to a local "
            f"diffusers folder"
        ) from None


def model_index(path: Path) -> dict[str, Any]:
    idx = path / "model_index.json"
    try:
        return json.loads(idx.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"{idx}: unreadable model index: {e}") from None


def _present(index: dict[str, Any], name: str) -> bool:
    val = index.get(name)
    return isinstance(val, list) and len(val) == 2 and val[0] is not None


def missing_components(path: Path) -> list[str]:
    """Paths (relative to ``path``) a loadable Wan2.2 diffusers folder needs but lacks."""
    if not (path / "model_index.json").is_file():
        return ["model_index.json", *[c + "/" for c in REQUIRED if not (path / c).is_dir()]]
    index = model_index(path)
    wanted = list(REQUIRED) + (["transformer_2"] if _present(index, "transformer_2") else [])
    missing = []
    for comp in wanted:
        folder = path / comp
        if not folder.is_dir() or not any(folder.iterdir()):
            missing.append(comp + "/")
        elif comp != "tokenizer" and not any(any(folder.glob(p)) for p in _WEIGHTS):
            missing.append(f"{comp}/ weights (*.safetensors)")
    return missing


def locate(spec: str) -> Path | None:
    """The local folder of a non-tiny ``spec`` (cheap; raises UserInputError if absent)."""
    if spec.startswith(TINY_PREFIX):
        return None
    path = Path(spec).expanduser()
    if not path.exists() and _HUB_ID.match(spec):
        path = _hub_snapshot(spec)
    elif not path.exists():
        raise MissingWeightsError(f"{path}: model folder not found; {download_hint(spec, path)}")
    missing = missing_components(path)
    if missing:
        raise MissingWeightsError(
            f"{path}: not a complete Wan2.2 diffusers folder, missing {', '.join(missing)}; "
            f"{download_hint(spec, path)}"
        )
    return path


def component_configs(spec: str) -> dict[str, Any]:
    """model_index + the transformer and VAE config dicts, without torch (for checks)."""
    if spec.startswith(TINY_PREFIX):
        try:
            cfg = tiny_config(tiny_layout(spec))
        except ValueError as e:
            raise UserInputError(str(e)) from None
        index = {"boundary_ratio": cfg["boundary_ratio"], "expand_timesteps": cfg["expand_timesteps"],
                 "transformer_2": ["diffusers", "x"] if cfg["transformer_2"] else [None, None]}
        return {"index": index, "transformer": cfg["transformer"], "vae": cfg["vae"]}
    path = locate(spec)
    assert path is not None
    out: dict[str, Any] = {"index": model_index(path)}
    for comp in ("transformer", "vae"):
        try:
            out[comp] = json.loads((path / comp / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserInputError(f"{path / comp / 'config.json'}: unreadable: {e}") from None
    return out


@dataclass
class Components:
    path: Path
    tokenizer: Any
    text_encoder: Any
    vae: Any
    scheduler: Any
    transformers: list[Any]  # [transformer] or [transformer, transformer_2]
    boundary_ratio: float | None
    expand_timesteps: bool


def load_components(
    spec: str, dtype: Any, boundary_override: float | None = None, vae_dtype: Any = None
) -> Components:
    """Load every component on CPU with its real ``from_pretrained`` (adapters are added and
    the modules moved to the device by the policy)."""
    import diffusers
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    path = resolve_model_path(spec) if spec.startswith(TINY_PREFIX) else locate(spec)
    assert path is not None
    index = model_index(path)
    sched_cls = getattr(diffusers, (index.get("scheduler") or [None, "UniPCMultistepScheduler"])[1])
    transformers_ = [WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)]
    if _present(index, "transformer_2"):
        transformers_.append(
            WanTransformer3DModel.from_pretrained(path, subfolder="transformer_2", torch_dtype=dtype)
        )
    boundary = boundary_override if boundary_override is not None else index.get("boundary_ratio")
    if len(transformers_) == 2 and boundary is None:
        raise UserInputError(f"{path}: two experts but no boundary_ratio in model_index.json; set model.boundary_ratio")
    return Components(
        path=path,
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(path / "text_encoder", dtype=dtype),
        vae=AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype or dtype),
        scheduler=sched_cls.from_pretrained(path, subfolder="scheduler"),
        transformers=transformers_,
        boundary_ratio=boundary if len(transformers_) == 2 else None,
        expand_timesteps=bool(index.get("expand_timesteps", False)),
    )
