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


def to_current_names(state: dict[str, Any]) -> dict[str, Any]:
    """Older transformers' Qwen2-VL names (``model.layers``, ``visual``) -> 5.x names."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
            key = "model.language_model." + key[len("model."):]
        out[key] = value
    return out


def load_hpsv3(cfg: HPSv3Config, device: str) -> tuple[Any, Any]:
    """(QwenVL bundle with the HPSv3 backbone, fp32 rm_head)."""
    import torch
    from safetensors.torch import load_file
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from unirl_stream.rewards.clip_common import _missing, resolve_file, torch_dtype
    from unirl_stream.rewards.openclip import MappingError, check_complete
    from unirl_stream.rewards.qwen_vl import QwenVL

    try:
        config = AutoConfig.from_pretrained(cfg.base, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cfg.base, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(cfg.base, local_files_only=True)
    except (OSError, ValueError) as e:
        raise _missing("hpsv3", "base", "Qwen2-VL config/tokenizer", cfg.base, e) from None
    tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    file = resolve_file(cfg.checkpoint, "hpsv3", "checkpoint")
    try:
        state = to_current_names(load_file(str(file)))
    except Exception as e:  # header/format errors of many kinds: name the file
        raise UserInputError(f"reward hpsv3: options.checkpoint: cannot read {file}: {e}") from None
    head_state = {k.removeprefix("rm_head."): state.pop(k) for k in [k for k in state if k.startswith("rm_head.")]}
    if sorted(head_state) != sorted(f"{i}.{p}" for i in HEAD_LAYERS for p in ("weight", "bias")):
        raise UserInputError(f"reward hpsv3: options.checkpoint: {file} has no ranknet rm_head (found {sorted(head_state)})")
    lin = [torch.nn.Linear(*head_state[f"{i}.weight"].shape[::-1]) for i in HEAD_LAYERS]
    head = torch.nn.Sequential(lin[0], torch.nn.ReLU(), lin[1], torch.nn.ReLU(), lin[2])  # eval: no dropout
    for layer, i in zip(lin, HEAD_LAYERS, strict=True):
        layer.load_state_dict({p: head_state[f"{i}.{p}"] for p in ("weight", "bias")})
    with torch.device("meta"):
        expected = Qwen2VLForConditionalGeneration(config).state_dict()
    try:
        check_complete(state, expected)
    except MappingError as e:
        raise UserInputError(f"reward hpsv3: options.checkpoint: {file} does not fit {cfg.base}: {e}") from None
    model = Qwen2VLForConditionalGeneration.from_pretrained(None, config=config, state_dict=state,
                                                            dtype=torch_dtype(cfg.dtype))
    if tokenizer.convert_tokens_to_ids(REWARD_TOKEN) >= model.get_input_embeddings().weight.shape[0]:
        raise UserInputError(f"reward hpsv3: options.base: the tokenizer's {REWARD_TOKEN} id is past the embedding table")
    model = model.to(device).eval().requires_grad_(False)
    vl = QwenVL(model, tokenizer, image_processor, device, min_pixels=cfg.pixels, max_pixels=cfg.pixels)
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
