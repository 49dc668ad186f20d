"""PPT: learnable dataset prompts + a PDNorm backbone + a categorical-alignment head (docs/reference.md §1).

Backbones (`arch`): "spunet" (SpUNet-v1m3, the fields channels ... attention_tokens) or "ptv3"
(Point Transformer V3, `ptv3.PTv3`; `ptv3` holds (field, value) pairs overriding its defaults, which
are the reference's PTv3 + PPT recipe). Both keep the parameter subtree `backbone`.

I/O contract: docs/design.md §4. `conditions` is the dataset-name tuple of the config (the same
order as `config.data.datasets`); `condition` (B,) indexes it for the prompt table, the per-dataset
BatchNorms and the head. The reference's two condition orders only matter when importing its
weights (`pointcept_import`).

Parameter groups (for the optimizer's 0.1x prompt learning rate): every parameter whose path
contains "prompt" (the prompt table `prompt_table`, the "add"/"cross_attention" adapters
`prompt_add_*` / `prompt_attention_*`) or "modulation" (the PDNorm modulation Dense layers);
`prompt_param_mask` returns that mask.
"""

from typing import Any

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

from ppt_jax.models import heads
from ppt_jax.models.ptv3 import PTv3
from ppt_jax.models.ptv3 import defaults as ptv3_defaults
from ppt_jax.models.spunet import SpUNet

PROMPT_KEYWORDS = ("prompt", "modulation")
ARCHS = ("spunet", "ptv3")
SPUNET_FIELDS = ("channels", "layers", "base_channels", "zero_init", "attention_tokens")
"""PPT fields that only the SpUNet backbone reads (PTv3 has its own in `ptv3`)."""


class PPT(nn.Module):
    """feat (B, N, C_in), batched sparse.Hierarchy, condition (B,) -> logits (B, N, K) float32."""
    conditions: tuple
    arch: str = "spunet"
    ptv3: tuple = ()                     # ((PTv3 setting, value), ...) for arch="ptv3"
    channels: tuple = (32, 64, 128, 256, 256, 128, 96, 96)
    layers: tuple = (2, 3, 4, 6, 2, 2, 2, 2)
    base_channels: int = 32
    context_channels: int = 256
    adapter: str = "pdnorm"
    norm_decouple: bool = True
    norm_adaptive: bool = True
    zero_init: bool = False
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_group_size: int = 0
    attention_tokens: int = 8
    head: str = "language"
    text_table: Any | None = None     # (36, D) numpy, unit rows; required by the language head
    s3dis_order: str = "intended"
    logit_scale: float = 100.0
    criteria: tuple = ("cross_entropy",)  # the training loss: heads.segmentation_loss
    dtype: Any = jnp.float32

    def __post_init__(self):
        # A tuple copy keeps the module hashable (usable as a static jit argument).
        if self.text_table is not None and not isinstance(self.text_table, tuple):
            table = np.asarray(self.text_table, np.float32)
            object.__setattr__(self, "text_table", tuple(map(tuple, table.tolist())))
        super().__post_init__()

    @property
    def class_mask(self):
        """(num_datasets, K) bool numpy: which logit columns exist for each dataset."""
        return heads.class_mask(self.conditions)

    def setup(self):
        if self.adapter != "none":
            self.prompt_table = self.param("prompt_table", nn.initializers.normal(1.0),
                                           (len(self.conditions), self.context_channels),
                                           jnp.float32)
        self.backbone = self._make_backbone()
        self.seg_head = self._make_head()

    def _make_backbone(self):
        if self.arch == "spunet":
            return SpUNet(len(self.conditions), self.channels, self.layers, self.base_channels,
                          self.adapter, self.norm_decouple, self.norm_adaptive, self.zero_init,
                          self.bn_momentum, self.bn_epsilon, self.bn_group_size,
                          self.attention_tokens, self.dtype)
        if self.arch != "ptv3":
            raise ValueError(f"model.backbone must be one of {ARCHS}, got {self.arch!r}")
        if self.adapter not in ("pdnorm", "none") or (self.adapter == "pdnorm" and self.norm_adaptive):
            raise ValueError("model.backbone='ptv3' takes model.adapter 'pdnorm' with "
                             "model.norm_adaptive=False (the reference's PTv3 recipe) or 'none'; got "
                             f"adapter={self.adapter!r}, norm_adaptive={self.norm_adaptive}")
        settings = dict(self.ptv3)
        unknown = sorted(set(settings) - set(ptv3_defaults()))
        if unknown:
            raise ValueError(f"model.ptv3.{unknown[0]} is not a PTv3 setting (those are "
                             f"{', '.join(ptv3_defaults())})")
        return PTv3(len(self.conditions), decouple=self.norm_decouple and self.adapter != "none",
                    bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                    bn_group_size=self.bn_group_size, dtype=self.dtype, **settings)

    def _make_head(self):
        if self.head == "language":
            if self.text_table is None:
                raise ValueError("model.head='language' needs the text table (ppt_jax.text."
                                 "class_embeddings) passed as PPT(text_table=...)")
            return heads.LanguageHead(self.conditions, self.text_table, self.s3dis_order,
                                      self.logit_scale)
        if self.head == "decoupled":
            return heads.DecoupledHead(self.conditions)
        if self.head == "unionized":
            return heads.UnionHead(self.conditions, self.s3dis_order)
        raise ValueError(f"model.head must be one of {heads.HEADS}, got {self.head!r}")

    def __call__(self, feat, hierarchy, condition, train: bool = False):
        return self.seg_head(self.features(feat, hierarchy, condition, train), condition)

    def features(self, feat, hierarchy, condition, train: bool = False):
        """Backbone features (B, N, channels[-1]) float32: PPT's `backbone_mode`."""
        context = None if self.adapter == "none" else self.prompt_table[condition]
        return self.backbone(feat, hierarchy, condition, context, train)


def prompt_param_mask(params, keywords=PROMPT_KEYWORDS):
    """Pytree of bools like `params`: True where a path part contains one of `keywords` (by default
    the prompt and modulation parameters; the optimizer's `config.optim.group_keywords`)."""
    keywords = tuple(keywords)
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: any(word in str(part) for part in path for word in keywords) for path in flat})


def count_params(params):
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
