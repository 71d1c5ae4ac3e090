"""HPSv3 (Ma et al., ICCV 2025): Qwen2-VL-7B with a reward head read at a special token.

Reference (MizzenAI/HPSv3, ``Qwen2VLRewardModelBT`` and its inferencer): the image is
resized with PIL bicubic to Qwen's ``smart_resize`` grid at exactly 256 * 28 * 28 pixels
(min = max), a user turn holds the image and ``INSTRUCTION.format(text_prompt=prompt)``
followed by " Please provide the overall ratings of this image: <|Reward|> END "; the
language model's final hidden state at the ``<|Reward|>`` token goes, in fp32, through
``Linear(d, 1024) - ReLU - Dropout - Linear(1024, 16) - ReLU - Linear(16, 2)``, whose
outputs are (mu, sigma) of the preference score; the score is mu.

Loading: the Qwen2-VL config, tokenizer and image processor come from ``base``
(Qwen/Qwen2-VL-7B-Instruct), ``<|Reward|>`` is added to the tokenizer as HPSv3 does, and
every weight (backbone and ``rm_head``) from the HPSv3 checkpoint, which older
transformers saved with ``model.layers.*`` / ``visual.*`` names: both layouts load.
Departures: prompts are left-padded (HPSv3 pads right; the reward token's state does
not depend on padding beyond rounding), and the image processor does the one PIL resize
(its ``smart_resize`` at min = max pixels is the reference's, so the reference's second
resize to the same size is a no-op we skip).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from msgspec import Meta

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import FrameOptions, FrameScorer, resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

REWARD_TOKEN = "<|Reward|>"
SUFFIX = " Please provide the overall ratings of this image: <|Reward|> END "
INSTRUCTION = """You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference.
Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best.

**Visual Quality:**
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible.

**Text Alignment:**
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance:** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency:** Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity:** Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence:** Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.

Textual prompt - {text_prompt}
"""
HEAD_LAYERS = (0, 3, 5)  # Linear indices in the reference's rm_head Sequential


class HPSv3Config(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    checkpoint: str = "MizzenAI/HPSv3/HPSv3.safetensors"
    """HPSv3 weights (safetensors): local path, or owner/repo/file in the local HF cache."""
    base: str = "Qwen/Qwen2-VL-7B-Instruct"
    """Qwen2-VL folder or hub id (local cache) for the config, tokenizer and image processor."""
    pixels: Annotated[int, Meta(ge=28 * 28)] = 256 * 28 * 28
    """Image area after resizing (the reference's min_pixels = max_pixels)."""
    batch_size: Annotated[int, Meta(ge=1)] = 8
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


def load_hpsv3(cfg: HPSv3Config, device: str) -> tuple[Any, Any]:
    """(QwenVL bundle with the HPSv3 backbone, fp32 rm_head)."""
    import torch

    from unirl_stream.rewards.qwen_vl import load_reward_backbone

    vl, head_state = load_reward_backbone(cfg.base, cfg.checkpoint, [REWARD_TOKEN], "hpsv3", device, cfg.dtype,
                                          cfg.pixels, cfg.pixels)
    if sorted(head_state) != sorted(f"{i}.{p}" for i in HEAD_LAYERS for p in ("weight", "bias")):
        raise UserInputError(f"reward hpsv3: options.checkpoint: {cfg.checkpoint} has no ranknet rm_head "
                             f"(found {sorted(head_state)})")
    lin = [torch.nn.Linear(*head_state[f"{i}.weight"].shape[::-1]) for i in HEAD_LAYERS]
    head = torch.nn.Sequential(lin[0], torch.nn.ReLU(), lin[1], torch.nn.ReLU(), lin[2])  # eval: no dropout
    for layer, i in zip(lin, HEAD_LAYERS, strict=True):
        layer.load_state_dict({p: head_state[f"{i}.{p}"] for p in ("weight", "bias")})
    return vl, head.float().eval().requires_grad_(False).to(device)


class HPSv3(FrameScorer):
    name: ClassVar[str] = "hpsv3"
    Config: ClassVar[type[HPSv3Config]] = HPSv3Config

    def __init__(self, config: HPSv3Config | None = None) -> None:
        super().__init__(config)
        self.device = resolve_device(self.config.device)
        self.vl, self.head = load_hpsv3(self.config, self.device)  # type: ignore[arg-type]
        self.reward_id = int(self.vl.tokenizer.convert_tokens_to_ids(REWARD_TOKEN))

    def reward_states(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The language model's final hidden state at each row's ``<|Reward|>``: [N, d]."""
        hidden = self.vl.model.model(**inputs, return_dict=True).last_hidden_state
        at = inputs["input_ids"] == self.reward_id
        if not bool((at.sum(1) == 1).all()):
            raise UserInputError(f"reward hpsv3: every prompt must hold one {REWARD_TOKEN} token")
        return hidden[at]

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        b, f = frames.shape[:2]
        images = [frames[i, j].numpy() for i in range(b) for j in range(f)]
        texts = [INSTRUCTION.format(text_prompt=p.text) + SUFFIX for p in prompts for _ in range(f)]
        states = self.reward_states(self.vl.inputs(images, texts))
        return self.head(states.float())[:, 0].view(b, f)  # mu; sigma ([:, 1]) is the uncertainty
