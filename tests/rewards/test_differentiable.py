"""Differentiable rewards (``score_tensor``) for reward-feedback learning, on the tiny
random models: equal to ``score`` on the same media, gradients checked by finite
differences, the recipe's weighted combination, and the refl recipe check."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest
import torch
from reward_helpers import make_media, make_prompts

from unirl_stream.api import DifferentiableScorer, Scorer, UserInputError
from unirl_stream.cli import main
from unirl_stream.recipe import Recipe, load
from unirl_stream.registry import load as load_plugin
from unirl_stream.rewards.clip_common import pil_bicubic
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.differentiable import build, check_differentiable
from unirl_stream.rewards.jpeg import JpegCompressibility
from unirl_stream.tomlio import dump

# Single-threaded torch (tests/conftest.py): two OpenMP threads on the shared 2-core machine
# made these tiny forwards and backwards 10-50x slower under load, not faster.
pytestmark = pytest.mark.usefixtures("tiny_model_env")

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart_image.toml"
# 32 x 32: no resize; the others resize (down and up) and crop (CLIP) or pad (HPS).
SIZES = [(32, 32), (64, 48), (61, 97), (24, 40), (32, 50), (300, 200)]
DIFFERENTIABLE = "aesthetic, brightness, clipscore, hpsv2, pickscore, video_pickscore"


def _options(tiny, name: str) -> dict:
    """Each scorer on the tiny models. CLIPScore uses the HPS folder's CLIP (seed 1): the
    seed-0 one gives these texts negative cosines, which CLIPScore clamps to 0."""
    return {
        "pickscore": {"model": str(tiny.clip), "processor": str(tiny.clip)},
        "video_pickscore": {"model": str(tiny.clip), "processor": str(tiny.clip)},
        "hpsv2": {"checkpoint": str(tiny.hps_checkpoint), "clip": str(tiny.hps_clip)},
        "clipscore": {"model": str(tiny.hps_clip), "prefix": ""},
        "aesthetic": {"model": str(tiny.clip), "head": str(tiny.head)},
    }[name]


def _scorer(tiny, name: str, **extra):
    cls = load_plugin("rewards", name)
    return cls(msgspec.convert(_options(tiny, name) | extra, cls.Config))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["pickscore", "hpsv2", "clipscore", "aesthetic"])
def test_score_tensor_equals_score_and_has_gradient(tiny, name: str) -> None:
    scorer = _scorer(tiny, name)
    assert isinstance(scorer, DifferentiableScorer)
    worst = 0.0
    for h, w in SIZES:
        media, prompts = make_media(3, 1, h, w, seed=h * w), make_prompts(3)
        exact = torch.tensor(scorer.score(media, prompts).scores, dtype=torch.float64)
        frames = media.float().requires_grad_(True)
        scores = scorer.score_tensor(frames, prompts)
        assert scores.shape == (3,) and scores.requires_grad
        worst = max(worst, (scores.detach().double() - exact).abs().max().item())
        scores.sum().backward()
        assert torch.isfinite(frames.grad).all()
        assert frames.grad.abs().sum() > 0, (h, w)
    # Measured: 0.0 for all four (the same kernels on the same values).
    assert worst <= 1e-5
    assert exact.std() > 1e-4  # the samples really differ (CLIPScore's are not clamped to 0)


@pytest.mark.timeout(30)
def test_video_form_aggregates_sampled_frames_only(tiny) -> None:
    scorer = _scorer(tiny, "video_pickscore", sample_frames=3, aggregate="min")
    video, prompts = make_media(2, 5, 40, 40, seed=9), make_prompts(2)
    frames = video.float().requires_grad_(True)
    scores = scorer.score_tensor(frames, prompts)
    torch.testing.assert_close(scores.double(), torch.tensor(scorer.score(video, prompts).scores,
                                                             dtype=torch.float64), rtol=0, atol=1e-5)
    scores.sum().backward()
    per_frame = frames.grad.abs().sum(dim=(2, 3, 4))
    # min over frames 0, 2, 4: one of them per sample gets the gradient, 1 and 3 none.
    assert (per_frame[:, [1, 3]] == 0).all()
    assert ((per_frame[:, [0, 2, 4]] > 0).sum(dim=1) == 1).all()


@pytest.mark.timeout(30)
def test_straight_through_rounding_keeps_pil_values_and_passes_the_linear_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 45, 70, generator=g, dtype=torch.float64) * 255).round()
    exact = pil_bicubic(x, 24, 37, window=(0, 2, 24, 32))
    ste_in, float_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ste = pil_bicubic(ste_in, 24, 37, window=(0, 2, 24, 32), rounding="straight_through")
    smooth = pil_bicubic(float_in, 24, 37, window=(0, 2, 24, 32), rounding="float")
    assert torch.equal(ste.detach(), exact)  # forward: PIL's integers, bit for bit
    assert (smooth.detach() != smooth.detach().round()).double().mean() > 0.99  # no rounding
    weight = torch.randn(ste.shape, generator=g, dtype=torch.float64)
    (ste * weight).sum().backward()
    (smooth * weight).sum().backward()
    # backward: identity through the rounding, so both are the same linear map's transpose
    torch.testing.assert_close(ste_in.grad, float_in.grad, rtol=1e-12, atol=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "size"), [("pickscore", (48, 40)), ("hpsv2", (40, 56)), ("clipscore", (36, 36)), ("aesthetic", (50, 33))]
)
def test_gradient_matches_central_differences_in_float64(tiny, name: str, size: tuple[int, int]) -> None:
    """On the smooth path (``rounding = "float"``: rounding's own derivative is 0 almost
    everywhere), float64 model: directional derivatives along random directions."""
    scorer = _scorer(tiny, name)
    scorer.model.double()
    if name == "aesthetic":
        scorer.head.double()
    g = torch.Generator().manual_seed(1)
    media, prompts = make_media(2, 1, *size, seed=5).double(), make_prompts(2)
    x0 = (media + torch.rand(media.shape, generator=g, dtype=torch.float64)).clamp(0, 255)
    x = x0.clone().requires_grad_(True)
    scorer.score_tensor(x, prompts, rounding="float").sum().backward()
    step, errors = 1e-3, []
    for _ in range(3):
        v = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            up = scorer.score_tensor(x0 + step * v, prompts, rounding="float").sum()
            down = scorer.score_tensor(x0 - step * v, prompts, rounding="float").sum()
        analytic = (x.grad * v).sum()
        errors.append(abs((up - down) / (2 * step) - analytic).item() / abs(analytic).item())
    # Measured at step 1e-3: 2e-11 .. 1e-8 over the four scorers (pickscore: 3e-8 at step
    # 1e-2, the O(step^2) term); a wrong gradient is off by O(1).
    assert max(errors) < 1e-6, errors


@pytest.mark.timeout(30)
def test_straight_through_gradient_is_close_to_the_smooth_one(tiny) -> None:
    scorer = _scorer(tiny, "pickscore")
    media, prompts = make_media(2, 1, 48, 40, seed=7).float(), make_prompts(2)
    grads = []
    for rounding in ("straight_through", "float"):
        x = media.clone().requires_grad_(True)
        scorer.score_tensor(x, prompts, rounding=rounding).sum().backward()
        grads.append(x.grad.flatten())
    # Only the model's Jacobian differs (evaluated at rounded vs unrounded pixels).
    assert torch.nn.functional.cosine_similarity(*grads, dim=0) > 0.999  # measured 0.99998


def _recipe_file(tmp_path: Path, rewards: list[dict]) -> Path:
    """The image quickstart (algorithm grpo) with other [[reward]] tables."""
    raw = tomllib.loads(QUICKSTART.read_text())
    raw["reward"] = rewards
    path = tmp_path / "recipe.toml"
    path.write_text(dump(raw))
    return path


def _recipe(tmp_path: Path, rewards: list[dict], algorithm: str = "refl") -> Recipe:
    """The same, its algorithm renamed by override."""
    return load(_recipe_file(tmp_path, rewards), [f"algorithm.name={algorithm}"])


@pytest.mark.timeout(60)
def test_combined_reward_is_the_reward_stages_weighted_total(tiny, tmp_path: Path) -> None:
    tables = [{"name": "pickscore", "weight": 2.0, "options": _options(tiny, "pickscore")},
              {"name": "brightness", "weight": -0.5},
              {"name": "hpsv2", "weight": 0.25, "options": _options(tiny, "hpsv2")}]
    recipe = _recipe(tmp_path, tables)
    check_differentiable(recipe, "recipe.toml")  # passes: all three are differentiable
    reward = build(recipe)
    assert reward.names == ["pickscore", "brightness", "hpsv2"]
    media, prompts = make_media(4, 1, 48, 64, seed=11), make_prompts(4)
    frames = media.float().requires_grad_(True)
    terms = reward.terms(frames, prompts)
    total = reward.total(terms)
    stage = RewardSet(recipe.reward, reward.scorers).score([p.id for p in prompts], media, prompts)
    torch.testing.assert_close(total.detach().double(), torch.tensor(stage.totals, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(reward(frames, prompts), total, rtol=0, atol=0)
    grads = []
    for name in reward.names:
        (grad,) = torch.autograd.grad(terms[name].sum(), frames, retain_graph=True)
        grads.append(grad.double())
    total.sum().backward()
    torch.testing.assert_close(frames.grad.double(), 2.0 * grads[0] - 0.5 * grads[1] + 0.25 * grads[2],
                               rtol=1e-5, atol=1e-9)
    assert grads[1].flatten()[0].item() == pytest.approx(1 / (48 * 64 * 3 * 255))  # brightness: d mean / 255


@pytest.mark.timeout(30)
def test_refl_recipe_names_its_non_differentiable_reward(tiny, tmp_path: Path) -> None:
    assert isinstance(JpegCompressibility(), Scorer)
    assert not isinstance(JpegCompressibility(), DifferentiableScorer)
    tables = [{"name": "brightness"}, {"name": "jpeg_compressibility", "weight": 0.1}]
    recipe = _recipe(tmp_path, tables)
    with pytest.raises(UserInputError) as err:
        check_differentiable(recipe, "recipe.toml")
    assert str(err.value) == (
        "recipe.toml: reward[1].name: reward 'jpeg_compressibility' is not differentiable "
        "(reward-feedback learning back-propagates the reward into the frames); "
        f"differentiable rewards: {DIFFERENTIABLE}"
    )
    assert err.value.exit_code == 2
    with pytest.raises(UserInputError, match=r"^reward\[1\]\.name: reward 'jpeg_compressibility'"):
        build(recipe)  # before any weights load
    check_differentiable(_recipe(tmp_path, tables, algorithm="grpo"), "recipe.toml")  # not refl: no check
    drop = _recipe(tmp_path, [{"name": "brightness", "on_nan": "drop"}])
    with pytest.raises(UserInputError, match=r"^recipe.toml: reward\[0\]\.on_nan: 'drop' is not supported"):
        check_differentiable(drop, "recipe.toml")


@pytest.mark.timeout(30)
def test_validate_exits_2_on_a_refl_recipe_with_a_non_differentiable_reward(tmp_path: Path, capsys) -> None:
    path = _recipe_file(tmp_path, [{"name": "ocr"}])
    with pytest.raises(SystemExit) as exit_:
        main(["validate", str(path), "--set", "algorithm.name=refl"])
    assert exit_.value.code == 2
    assert f"{path}: reward[0].name: reward 'ocr' is not differentiable" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_score_tensor_wants_float_frames(tiny) -> None:
    scorer = _scorer(tiny, "pickscore")
    with pytest.raises(UserInputError, match=r"media must be float \[B, F, H, W, 3\] on the uint8 scale"):
        scorer.score_tensor(make_media(1, 1, 32, 32), make_prompts(1))
