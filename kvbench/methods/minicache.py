"""``minicache``: cross-layer KV merging (Liu et al. 2024, "MiniCache: KV Cache Compression in Depth
Dimension for Large Language Models", NeurIPS).

From layer ``start_layer`` onward, adjacent layers (S, S+1), (S+2, S+3), ... share one cache: for every
token, separately for K and V, the two layers' states are split into magnitudes and directions and the
directions are merged by SLERP (Eq. 3-5 of MiniCache; math in :mod:`kvbench.cache.minicache`). The pair
stores one direction, both layers' norms, and -- exactly, with their indices -- the few tokens whose
directions differ most (retention). Attention restores each layer's states on the fly. A merged pair
costs ``0.5 + 1/(h·d) + γ`` of its full size, for K and V each (METHODS.md §4).

Parameters:

* ``start_layer`` -- first merged layer S; ``None`` = L/2 (the paper's default), else in [1, L-2].
  ``experiments/minicache_similarity`` shows per-pair similarity to choose it from evidence.
* ``t`` -- SLERP interpolation toward the deeper layer, in [0, 1] (paper: 0.6). 0 / 1 keep layer a's / b's
  direction.
* ``gamma`` -- retention fraction γ in [0, 1] (paper: 0.05). 1 keeps every token exactly (= ``full``).
* ``retention`` -- which tokens are kept exactly:
  ``top_fraction`` (default) keeps the ⌈γ·N⌉ tokens with the largest angular distance Ω/π, matching the
  paper's text ("retain tokens with low similarity") and its memory analysis (γ retained);
  ``range`` keeps tokens with d > d_max − γ·(d_max − d_min), the paper's range-threshold rule read with the
  inequality pointing the way its text says (as printed, d < d_min + γ·(d_max − d_min), it would keep the
  *most similar* tokens, and flipping only the sign would keep ~all of them at γ = 0.05). Its memory depends
  on the data. The threshold is fixed per row at the end of prefill.
* ``norm`` -- ``concat`` (default, paper): one norm per token over all KV heads concatenated; ``per_head``:
  norms, directions and retention per KV head (1/d instead of 1/(h·d) for the norms).

Decoding: each new token is merged once the pair's second layer has run. With ``top_fraction`` the row
keeps ⌈γ·n⌉ exact tokens as n grows (a new token takes a free slot when one opens), so memory follows the
formula at every length and γ = 1 reproduces ``full`` during decoding too; with ``range`` a new token is
kept when its distance passes the context's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvbench.cache.combined import Merging
from kvbench.cache.merging import NORMS, RETENTIONS
from kvbench.cache.minicache import MergedPairCache
from kvbench.methods.base import Method, MethodConfigError, register, sliding_window_in_effect


def _num_layers(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.num_hidden_layers


@register
@dataclass
class MiniCache(Method):
    axis = "layers"
    name: str = "minicache"
    start_layer: Optional[int] = None
    t: float = 0.6
    gamma: float = 0.05
    retention: str = "top_fraction"
    norm: str = "concat"

    def __post_init__(self):
        if self.start_layer is not None and (isinstance(self.start_layer, bool) or not isinstance(self.start_layer, int)
                                             or self.start_layer < 1):
            raise MethodConfigError(f"method.start_layer={self.start_layer!r} must be null (= L/2) or an integer "
                                    "layer index >= 1 (and <= L-2)")
        if not 0.0 <= self.t <= 1.0:
            raise MethodConfigError(f"method.t={self.t} must be in [0, 1] (0 = first layer's direction, "
                                    "1 = second layer's; paper: 0.6)")
        if not 0.0 <= self.gamma <= 1.0:
            raise MethodConfigError(f"method.gamma={self.gamma} must be in [0, 1] (fraction of tokens retained "
                                    "exactly; paper: 0.05)")
        if self.retention not in RETENTIONS:
            raise MethodConfigError(f"method.retention={self.retention!r} is not valid "
                                    f"(choose one of: {', '.join(RETENTIONS)})")
        if self.norm not in NORMS:
            raise MethodConfigError(f"method.norm={self.norm!r} is not valid (choose one of: {', '.join(NORMS)})")

    def resolved_start_layer(self, config) -> int:
        """S for this model: ``start_layer`` or L/2."""
        return _num_layers(config) // 2 if self.start_layer is None else self.start_layer

    def check_model(self, config) -> None:
        n = _num_layers(config)
        if n < 3:
            raise MethodConfigError(f"method=minicache needs a model with at least 3 layers (this one has {n})")
        s = self.resolved_start_layer(config)
        if not 1 <= s <= n - 2:
            raise MethodConfigError(f"method.start_layer={s} must be in [1, {n - 2}] for this {n}-layer model "
                                    f"(null = L/2 = {n // 2})")
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        types = getattr(text, "layer_types", None)  # none listed: a window in effect slides every layer (Mistral v0.1)
        kinds = set(types[s:] if types else ["sliding_attention" if sliding_window_in_effect(text) else "full_attention"])
        if kinds - {"full_attention"}:
            raise MethodConfigError(f"method=minicache merges full-attention layers only; layers {s}.. of this "
                                    f"model include {', '.join(sorted(kinds - {'full_attention'}))}")

    def merging(self, config) -> Merging:
        """What ``combined``'s cache merges on the layers axis, for this model."""
        self.check_model(config)
        return Merging(self.resolved_start_layer(config), self.t, self.gamma, self.retention, self.norm)

    def new_cache(self, model) -> MergedPairCache:
        self.check_model(model.config)
        return MergedPairCache(_num_layers(model.config), self.resolved_start_layer(model.config),
                               t=self.t, gamma=self.gamma, retention=self.retention, norm=self.norm)
