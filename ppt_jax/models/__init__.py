"""The PPT model: SpUNet-v1m3 with prompt-driven normalization, heads, loss, weight import."""

from ppt_jax.models.heads import HEADS, MASKED, class_mask, segmentation_loss, union_rows
from ppt_jax.models.norm import PDNorm
from ppt_jax.models.ppt import PPT, PROMPT_KEYWORDS, count_params, prompt_param_mask
from ppt_jax.models.spunet import ADAPTERS, SpUNet

__all__ = ["ADAPTERS", "HEADS", "MASKED", "PDNorm", "PPT", "PROMPT_KEYWORDS", "SpUNet",
           "class_mask", "count_params", "prompt_param_mask", "segmentation_loss", "union_rows"]
