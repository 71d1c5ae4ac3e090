"""Tiny models on disk, the real loader, and the missing-weights errors."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
import torch
from core_helpers import PROMPTS, build_policy, make_recipe

from unirl_stream.api import UserInputError
from unirl_stream.models.tiny import build_pipeline, resolve_model_path
from unirl_stream.models.wan22 import Wan22Policy


@pytest.mark.parametrize("layout", ["two_expert", "ti2v"])
def test_saved_tiny_model_loads_identically_through_real_loader(layout: str) -> None:
    path = resolve_model_path(f"tiny:{layout}")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for comp in ("text_encoder", "tokenizer", "vae", "transformer", "scheduler"):
        assert (path / comp).is_dir(), comp
    assert (path / "transformer_2").is_dir() == (layout == "two_expert")
    assert index["expand_timesteps"] == (layout == "ti2v")
    ref = build_pipeline(layout)  # the in-memory model the folder was saved from
    policy = build_policy(make_recipe(layout))
    loaded = policy.pipeline
    if layout == "ti2v":
        assert loaded.vae.config.z_dim == 48 and loaded.vae.config.patch_size == 2
        assert loaded.vae.config.scale_factor_spatial == 16 and loaded.transformer.config.in_channels == 48
    else:
        assert loaded.config.boundary_ratio == 0.875 and loaded.transformer_2 is not None
    # Same base weights, parameter by parameter (the loaded experts also carry LoRA).
    for name in ("text_encoder", "vae", "transformer", "transformer_2"):
        a, b = getattr(ref, name), getattr(loaded, name)
        if a is None:
            assert b is None
            continue
        got = {k: v for k, v in b.state_dict().items() if "lora_" not in k}
        got = {k.replace(".base_layer", ""): v for k, v in got.items()}
        want = a.state_dict()
        assert set(got) == set(want), name
        assert all(torch.equal(got[k], want[k]) for k in want), name
    # Same outputs: prompt embeddings and a full WanPipeline call (LoRA B = 0 adds exactly 0).
    hw = 32 if layout == "two_expert" else 64
    kw = dict(height=hw, width=hw, num_frames=5, num_inference_steps=3, guidance_scale=3.0,
              max_sequence_length=8, output_type="latent")
    out_ref = ref(PROMPTS[0].text, generator=torch.Generator().manual_seed(0), **kw).frames
    out_loaded = loaded(PROMPTS[0].text, generator=torch.Generator().manual_seed(0), **kw).frames
    # Same weights, but two separately built models: BLAS may pick other kernels for other
    # buffers (alignment), so outputs agree to ~1e-7 on some CPUs, bit for bit on others.
    torch.testing.assert_close(out_loaded, out_ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        emb_ref, _ = ref.encode_prompt(PROMPTS[1].text, do_classifier_free_guidance=False, max_sequence_length=8)
    torch.testing.assert_close(policy.embed([PROMPTS[1]])[0], emb_ref[0], rtol=1e-5, atol=1e-6)


def test_tiny_cache_build_is_race_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIRL_STREAM_CACHE", str(tmp_path))
    with ThreadPoolExecutor(2) as ex:
        paths = list(ex.map(resolve_model_path, ["tiny:two_expert"] * 2))
    assert paths[0] == paths[1] and (paths[0] / "model_index.json").is_file()
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [paths[0].name]  # no temp leftovers
    with pytest.raises(ValueError, match="unknown tiny model"):
        resolve_model_path("tiny:nope")


def _recipe_with_path(path: str, **model: object):
    r = make_recipe("two_expert")
    return msgspec.structs.replace(r, model=msgspec.structs.replace(r.model, path=path, **model))


def test_missing_weights_name_the_path_and_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "Wan2.2-T2V-A14B-Diffusers"
    with pytest.raises(UserInputError) as e:
        Wan22Policy.check(_recipe_with_path(str(missing)))
    msg = str(e.value)
    assert str(missing) in msg and "huggingface-cli download Wan-AI/Wan2.2-T2V-A14B-Diffusers" in msg
    assert f"--local-dir {missing}" in msg
    # A folder with an index but no transformer weights.
    partial = tmp_path / "wan-ti2v-5b"
    (partial / "vae").mkdir(parents=True)
    (partial / "vae" / "config.json").write_text("{}")
    (partial / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(UserInputError) as e:
        Wan22Policy.from_recipe(_recipe_with_path(str(partial)), device="cpu")
    msg = str(e.value)
    assert str(partial) in msg and "transformer/" in msg and "vae/ weights" in msg
    assert "Wan-AI/Wan2.2-TI2V-5B-Diffusers" in msg
    # A hub id that is not in the (empty) local cache: never downloaded, named.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserInputError, match=r"Wan-AI/Wan2\.2-T2V-A14B-Diffusers: not a local folder.*huggingface-cli download"):
        Wan22Policy.check(_recipe_with_path("Wan-AI/Wan2.2-T2V-A14B-Diffusers"))


def test_check_rejects_untrainable_expert_and_bad_geometry() -> None:
    r = make_recipe("two_expert", num_inference_steps=20, shift=5.0, sde={"fraction": [0.0, 0.2]})
    with pytest.raises(UserInputError, match=r"trains \['low'\] but no SDE step reaches it"):
        Wan22Policy.check(r)
    Wan22Policy.check(msgspec.structs.replace(r, model=msgspec.structs.replace(
        r.model, lora=msgspec.structs.replace(r.model.lora, experts=["high"]))))
    with pytest.raises(UserInputError, match="multiples of 32x32"):
        Wan22Policy.check(make_recipe("ti2v", height=48))


def test_check_and_import_do_not_import_torch() -> None:
    code = (
        "import sys, msgspec\n"
        "from unirl_stream.recipe import Recipe\n"
        "from unirl_stream.models.wan22 import Wan22Policy\n"
        "r = msgspec.convert({'run': {'name': 'x', 'total_steps': 1}, 'model': {'path': 'tiny:ti2v',"
        " 'lora': {'experts': ['high']}}, 'data': {'prompts': 'p.txt'}, 'sampling': {'height': 64, 'width': 64}}, Recipe)\n"
        "Wan22Policy.check(r)\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_production_recipe_trains_only_experts_its_sde_steps_reach() -> None:
    """recipes/wan22_dancegrpo.toml: every expert with an adapter must get gradient."""
    from unirl_stream.models.wan22 import experts_reached
    from unirl_stream.recipe import load

    path = Path(__file__).resolve().parents[2] / "recipes" / "wan22_dancegrpo.toml"
    if not path.is_file():
        pytest.skip("recipes/wan22_dancegrpo.toml not present")
    recipe = load(path)
    boundary = recipe.model.boundary_ratio if recipe.model.boundary_ratio is not None else 0.875
    assert set(recipe.model.lora.experts) <= experts_reached(recipe.sampling, boundary)
