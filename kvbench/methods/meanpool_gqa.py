"""``meanpool_gqa``: convert to g KV heads by averaging each group's key/value projections.

Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from
Multi-Head Checkpoints" (Sec. 2.1): the KV heads are split into g contiguous groups of
t = h/g heads; the new key (value) projection of group i is the mean of its t heads'
projections (weights and biases). Queries and outputs are unchanged; query head j now
reads group ⌊j·g/H⌋ (METHODS.md §1). RoPE commutes with the average, so this is pure
weight surgery: the model's own attention runs as GQA with g heads and a plain
``DynamicCache`` holds g/h of the full cache bytes. Works on Llama-family attention
(q/k/v/o_proj) and on BLOOM (fused query_key_value, split exactly first).

In the paper this is the starting point for up-training; used as is (here), quality
drops sharply -- it is the baseline that SVD-GQA's initialisation beats.

Parameters:
    kv_heads: target number of KV heads g; must divide the model's KV heads h
        (1 = multi-query attention; h = no change). Default 1.
    recovery: ``none`` (default) or ``lora``: LoRA fine-tuning after the surgery, merged into the weights
        (the recovery stage of SVD-GQA's ablation; settings ``lora.*``, :mod:`kvbench.surgery.recovery`).
        The adapter is cached under ``$KVBENCH_CACHE_DIR/recovery``. Needs peft.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kvbench.methods.base import Method, changed, register
from kvbench.surgery.heads import check_kv_heads, check_positive_kv_heads, meanpool_kv_heads
from kvbench.surgery.recovery import LoRASettings, import_peft, lora_settings, recover, without_unused_lora


@register
@dataclass
class MeanPoolGQA(Method):
    axis = "heads"
    name: str = "meanpool_gqa"
    kv_heads: int = 1
    recovery: str = "none"
    lora: LoRASettings = field(default_factory=LoRASettings)

    def __post_init__(self):
        check_positive_kv_heads(self.kv_heads)
        self.lora = lora_settings(self.recovery, self.lora)

    def params(self) -> dict:
        """Without recovery the LoRA settings do nothing: left out (one run, one label, one config hash)."""
        return without_unused_lora(super().params())

    def changed_params(self, base=None) -> dict:
        """As :meth:`Method.changed_params`, LoRA settings compared with the base's even where it has no recovery."""
        base = type(self)() if base is None else base
        return changed(self.params(), {**base.params(), "lora": asdict(base.lora)})

    def check_model(self, config) -> None:
        check_kv_heads(self.kv_heads, config)
        if self.recovery == "lora":
            import_peft()

    def apply(self, model, tokenizer=None):
        model = meanpool_kv_heads(model, self.kv_heads)
        if self.recovery == "lora":
            model = recover(model, tokenizer, {"method": self.name, "kv_heads": self.kv_heads}, self.lora)
        return model
