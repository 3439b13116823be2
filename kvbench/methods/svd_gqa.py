"""``svd_gqa``: convert to g KV heads with SVD projections, activation-calibrated ("SVD-a") or from the
weights ("SVD-w"), optionally followed by LoRA recovery.

Yu et al. 2024, "Effectively Compress KV Heads for LLM" (arXiv 2406.07056), Sec. 3.
Calibration text is run through the model; per layer and group i of t = h/g KV heads,
the top-d eigenvectors of the covariance of the group's concatenated keys (after RoPE)
give Ψ_i ∈ R^{d×t·d}, likewise Ω_i for values (METHODS.md §2). The cache then holds
k̃ = k_concat Ψ_iᵀ and ṽ = v_concat Ω_iᵀ: g heads of dimension d, g/h of full.

* values: Ω is folded into ``v_proj`` (W_V' = Ω_i W_V,group) and ``o_proj``
  (W_O,j' = W_O,j Ω_i^(p)ᵀ), exact weight surgery;
* keys without RoPE: Ψ is folded into ``k_proj`` and ``q_proj`` likewise;
* keys with RoPE: the rotation depends on position, so a replacement attention
  (:class:`kvbench.surgery.svd_attention.SVDRopeAttention`) rotates, then projects
  keys (cached, g heads) and queries.

When the group is redundant (t copies of one head, or g = h) the projection is exact, for both inits.
Works on Llama-family attention (q/k/v/o_proj) and on BLOOM (ALiBi, fused query_key_value).

Parameters:
    kv_heads: target number of KV heads g; must divide the model's KV heads. Default 1.
    init: ``activation`` (SVD-a, default: the calibration covariance above) or ``weight`` (SVD-w,
        METHODS.md §2b: Ψ_i, Ω_i = top-d right singular vectors of the group's concatenated key/value
        weights; no calibration text is read). Fusing and the RoPE path are the same for both.
    calibration: corpus: ``pydoc`` (Python's docs prose, offline, calibration split of
        :mod:`kvbench.corpus`), a local ``.txt``/``.jsonl`` path, or a hub dataset name.
    calibration_sequences: number of calibration sequences (default 32).
    calibration_length: tokens per calibration sequence (default 512; 32×512 ≈ 16k tokens).
    seed: which chunks of the corpus are drawn.
    rope: ``auto`` (detect from the model's rotary embedding), ``rotary`` (force the
        replacement attention) or ``none`` (fuse keys; on a RoPE model this is only an
        approximation, since Ψ is calibrated on rotated keys).
    reuse_calibration: load/save the projections under ``$KVBENCH_CACHE_DIR/calibration``
        (default ``~/.cache/kvbench/calibration``) keyed by model, settings and corpus; likewise the
        LoRA adapter under ``$KVBENCH_CACHE_DIR/recovery``.
    recovery: ``none`` (default: quality right after the surgery) or ``lora``: the paper's second stage,
        LoRA fine-tuning then merged (:mod:`kvbench.surgery.recovery`; settings ``lora.rank``, ``lora.alpha``,
        ``lora.steps``, ``lora.lr``, ``lora.seq_len``, ``lora.batch_size``, ``lora.corpus``, ...). Needs peft.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from kvbench.corpus import CorpusError, check_source
from kvbench.methods.base import Method, MethodConfigError, changed, register
from kvbench.surgery.calibration import CalibrationSpec, load_or_calibrate, weight_bases
from kvbench.surgery.heads import check_kv_heads, check_positive_kv_heads, editable_attention_layers, layout
from kvbench.surgery.recovery import LoRASettings, import_peft, lora_settings, recover, without_unused_lora
from kvbench.surgery.svd_attention import has_rope, rotary_module, svd_convert

log = logging.getLogger(__name__)
ROPE_MODES = ("auto", "rotary", "none")
INITS = ("activation", "weight")


@register
@dataclass
class SVDGQA(Method):
    axis = "heads"
    name: str = "svd_gqa"
    kv_heads: int = 1
    init: str = "activation"
    calibration: str = "pydoc"
    calibration_sequences: int = 32
    calibration_length: int = 512
    seed: int = 0
    rope: str = "auto"
    reuse_calibration: bool = True
    recovery: str = "none"
    lora: LoRASettings = field(default_factory=LoRASettings)

    def __post_init__(self):
        check_positive_kv_heads(self.kv_heads)
        if self.init not in INITS:
            raise MethodConfigError(f"method.init={self.init!r} is not valid (choose one of: {', '.join(INITS)})")
        self.lora = lora_settings(self.recovery, self.lora)
        for field in ("calibration_sequences", "calibration_length"):
            if getattr(self, field) <= 0:
                raise MethodConfigError(f"method.{field}={getattr(self, field)} must be a positive number")
        if self.rope not in ROPE_MODES:
            raise MethodConfigError(f"method.rope={self.rope!r} is not valid (choose one of: {', '.join(ROPE_MODES)})")
        try:
            check_source(self.calibration)
        except CorpusError as err:
            raise MethodConfigError(f"method.calibration: {err}") from None

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
        if tokenizer is None and (self.init == "activation" or self.recovery == "lora"):
            raise MethodConfigError("svd_gqa needs the model's tokenizer to calibrate (init=activation) or recover")
        lay = layout(model, self.kv_heads)
        if self.rope == "rotary" and rotary_module(model) is None:
            raise MethodConfigError(f"method.rope=rotary: {type(model).__name__} has no rotary embedding "
                                    "(choose rope=auto or rope=none)")
        rope = has_rope(model) if self.rope == "auto" else self.rope == "rotary"
        if self.rope == "none" and has_rope(model):
            log.warning("svd_gqa: rope=none on a RoPE model fuses keys before rotation (an approximation)")
        if self.init == "weight":
            bases = weight_bases(editable_attention_layers(model), lay.groups, lay.head_dim)
        else:
            spec = CalibrationSpec(self.calibration, self.calibration_sequences, self.calibration_length, self.seed)
            bases = load_or_calibrate(model, tokenizer, spec, lay.groups, lay.head_dim, self.reuse_calibration)
        log.info("svd_gqa (SVD-%s): %d -> %d KV heads, keys %s", self.init[0], lay.n_kv, lay.groups,
                 "projected after RoPE" if rope else "fused into k_proj/q_proj")
        model = svd_convert(model, lay, bases, rope)
        if self.recovery == "lora":
            surgery = {k: v for k, v in self.params().items() if k not in ("recovery", "lora", "reuse_calibration")}
            model = recover(model, tokenizer, {"method": self.name, **surgery}, self.lora, self.reuse_calibration)
        return model
