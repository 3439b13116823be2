"""The support matrix: for every model family and every method, whether the method works, works with a stated
difference, or is refused (and why). One registry, three readers:

* a run refuses a cell marked :data:`REFUSED` before any weight loads, in one line naming the reason
  (:func:`check_supported`, called by :func:`kvbench.validation.validate` and the lm-eval model);
* ``tests/test_support.py`` runs every cell on a tiny random model of the family (``tests/families.py``): a cell
  that says it works must pass the checks (no-op setting = ``full``, a batch = batch-1 runs, ``nbytes`` counts
  every tensor, the bytes shrink by the method's ratio), and a refused cell must be refused with its reason;
* the README's support table is printed from it (``python -m kvbench.support``; a test fails on drift).

Why families differ (issue 27): methods patch attention and read config fields, and assume RoPE inside attention,
full attention in every layer, no q/k norm, no soft-capping and separate q/k/v projections. Gemma-2/3 alternate
sliding-window and global layers (Gemma-2 soft-caps its logits), Mistral v0.1 slides a window over every layer,
Qwen3 and Gemma-3 normalise q and k per head, Phi-3 fuses q/k/v, OPT learns its positions and BLOOM adds ALiBi.

A family is found from the model's config (``model_type``, and whether a sliding window is in effect), or named
by the model config (``model.family``) so a dry run can check a hub model offline.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from kvbench.errors import MethodConfigError
from kvbench.methods import METHODS
from kvbench.methods.base import sliding_window_in_effect

WORKS, DIFFERS, REFUSED = "works", "works with a difference", "refused"


class UnsupportedModelError(MethodConfigError):
    """The method cannot run on this model family (the support matrix's refused cell)."""


@dataclass(frozen=True)
class Family:
    """A row of the matrix: which transformers ``model_type`` it covers and what sets it apart."""

    name: str
    label: str
    model_types: tuple[str, ...]
    traits: str


@dataclass(frozen=True)
class Cell:
    status: str
    reason: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", "Llama-2/3, SmolLM2, Mistral v0.2+", ("llama", "mistral"), "RoPE, GQA, full attention"),
    Family("mistral", "Mistral v0.1 (sliding window)", ("mistral",), "RoPE, GQA, a sliding window on every layer"),
    Family("qwen2", "Qwen2 / Qwen2.5", ("qwen2",), "RoPE, GQA, q/k/v biases"),
    Family("qwen3", "Qwen3", ("qwen3",), "RoPE, GQA, per-head q/k RMSNorm"),
    Family("gemma2", "Gemma-2", ("gemma2",), "alternating sliding/global layers, attention logit soft-capping"),
    Family("gemma3", "Gemma-3 (text)", ("gemma3", "gemma3_text"), "alternating sliding/global layers, q/k norm"),
    Family("phi3", "Phi-3 / Phi-4-mini", ("phi3",), "fused qkv_proj, partial RoPE in Phi-4-mini"),
    Family("opt", "OPT", ("opt",), "learned absolute positions, MHA"),
    Family("bloom", "BLOOM", ("bloom",), "ALiBi, fused query_key_value, MHA"),
    Family("gpt_neox", "GPT-NeoX / Pythia", ("gpt_neox",), "partial RoPE, fused query_key_value, MHA"),
)}

# -- reasons, each stated once -------------------------------------------------------------------------------
SLIDING_EVICTION = ("evicts by one budget per layer, and this model's sliding-window layers already drop every "
                    "token outside their window (a budget there would keep tokens the model no longer sees)")
SLIDING_QUANTIZE = ("quantizes every layer's whole cache, and this model's sliding-window layers keep only their "
                    "window (kvbench's quantized cache has no window: it would store more than full does)")
SLIDING_MERGE = ("merges adjacent layers, and this model's layers have a sliding window that drops tokens a "
                 "merged pair must keep (adjacent Gemma layers even differ in attention type)")
FUSED_QKV = ("does KV-head surgery on separate q_proj/k_proj/v_proj/o_proj linears, and this family fuses "
             "q/k/v into one {fused} linear")
NO_O_PROJ = ("does KV-head surgery on q_proj/k_proj/v_proj/o_proj with a num_key_value_heads setting, and OPT's "
             "attention has out_proj and no grouped heads")
UNSCORED = ("reads attention scores from transformers' attention interface, and BLOOM's attention does not go "
            "through it (its ALiBi attention is built in)")
GEMMA3_ROPE = ("replaces the attention to rotate the projected keys, and Gemma-3's attention takes a rotary "
               "embedding per layer type (local/global) that the replacement does not know")
ALIBI_REINDEXED = ("counts ALiBi distances over the kept tokens: BLOOM builds its ALiBi bias over the "
                   "cache's stored length, so kept tokens are re-indexed 0..k-1 (as StreamingLLM's paper does with "
                   "positions), not kept at their original positions")

#: Token methods that read attention or queries through transformers' attention interface (BLOOM's bypasses it).
_SCORED = ("h2o", "snapkv", "pyramidkv", "tova", "adakv", "expected_attention", "kvzip", "duo_attention")
_SLIDING = {**{m: Cell(REFUSED, SLIDING_EVICTION) for m in (*_SCORED, "knorm", "streaming_llm")},
            **{m: Cell(REFUSED, SLIDING_QUANTIZE) for m in ("kivi", "rtn")},
            "minicache": Cell(REFUSED, SLIDING_MERGE)}
_HEADS = ("meanpool_gqa", "svd_gqa")

#: Every cell that is not WORKS: ``{family: {method: Cell}}``; every other (family, method) works, except
#: ``combined``, whose cell is its default components' (:func:`cell`).
_EXCEPTIONS: dict[str, dict[str, Cell]] = {
    "mistral": _SLIDING,
    "gemma2": _SLIDING,
    "gemma3": {**_SLIDING, "svd_gqa": Cell(REFUSED, GEMMA3_ROPE)},
    "phi3": {m: Cell(REFUSED, FUSED_QKV.format(fused="qkv_proj")) for m in _HEADS},
    "opt": {m: Cell(REFUSED, NO_O_PROJ) for m in _HEADS},
    "bloom": {**{m: Cell(REFUSED, UNSCORED) for m in _SCORED},
              **{m: Cell(DIFFERS, ALIBI_REINDEXED) for m in ("knorm", "streaming_llm")}},
    "gpt_neox": {m: Cell(REFUSED, FUSED_QKV.format(fused="query_key_value")) for m in _HEADS},
}
#: Rows whose tiny model already slides a window (their cells say what a window does to each method).
SLIDING_ROWS = ("mistral", "gemma2", "gemma3")
#: The components ``combined`` runs with its defaults, in the order it applies them.
COMBINED_DEFAULTS = ("svd_gqa", "minicache", "h2o")


def methods() -> list[str]:
    """The registered methods' names (the matrix's columns), read from the method registry."""
    return sorted(METHODS.discover())


def cell(family: str, method: str) -> Cell:
    """The matrix cell of ``method`` on ``family``; ``combined``'s is that of its first refused default
    component (another choice of components is checked component by component: :func:`check_supported`)."""
    if method == "combined":
        refused = [(m, cell(family, m)) for m in COMBINED_DEFAULTS if cell(family, m).status == REFUSED]
        return Cell(REFUSED, f"{refused[0][0]} {refused[0][1].reason}") if refused \
            else Cell(WORKS)
    return _EXCEPTIONS.get(family, {}).get(method, Cell(WORKS))


def matrix() -> dict[str, dict[str, Cell]]:
    """``{family: {method: Cell}}`` for every family and every registered method."""
    return {family: {method: cell(family, method) for method in methods()} for family in FAMILIES}


def family_of(config) -> str | None:
    """The matrix row of a transformers config; None for a family the matrix does not cover."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", None)
    if model_type == "mistral":
        return "mistral" if sliding_window_in_effect(text) else "llama"
    return next((f.name for f in FAMILIES.values() if model_type in f.model_types), None)


def check_supported(method, family: str | None, sliding: bool = False) -> None:
    """Raise :class:`UnsupportedModelError` (one line) if ``method`` -- or, for ``combined``, one of its
    components -- is refused on ``family``. ``sliding``: the model's config turns on a sliding window its
    family's row does not have (Phi-3-mini-4k's 2047 tokens, Qwen2 with ``use_sliding_window``): the sliding-
    window refusals (the ``mistral`` row's) apply too. An unknown family is left to the method's own
    ``check_model``."""
    if family is None:
        return
    if family not in FAMILIES:
        raise MethodConfigError(f"model.family={family!r} is not a family of the support matrix "
                                f"(choose one of: {', '.join(FAMILIES)}, or null to read it from the model's config)")
    parts = method.components()
    for name in [c.name for c in parts.values()] if parts else [method.name]:
        found = cell(family, name)
        if found.status != REFUSED and sliding:
            found = _SLIDING.get(name, found)
        if found.status == REFUSED:
            what = f"its component {name}" if parts else name
            raise UnsupportedModelError(f"method={method.name} cannot run on {FAMILIES[family].label} models: "
                                        f"{what} {found.reason}")


def check_model_supported(method, config) -> None:
    """:func:`check_supported` for a loaded transformers config (its family and its sliding window)."""
    family = family_of(config)
    sliding = family is not None and sliding_window_in_effect(config) and family not in SLIDING_ROWS
    check_supported(method, family, sliding)


def support_markdown() -> str:
    """The README's support table: one row per family, one column per method, then each stated difference and
    refusal once, with its reason and where it applies."""
    cols, full = methods(), matrix()
    mark = {WORKS: "✓", DIFFERS: "✓*", REFUSED: "✗"}
    lines = ["| family | traits | " + " | ".join(f"`{m}`" for m in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    notes: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for name, family in FAMILIES.items():
        lines.append(f"| {family.label} (`{name}`) | {family.traits} | "
                     + " | ".join(mark[full[name][m].status] for m in cols) + " |")
        for m, c in full[name].items():
            if c.status != WORKS:
                families, names = notes.setdefault((c.status, f"{m}\0{c.reason}" if m == "combined" else c.reason),
                                                   ([], []))
                families.append(family.label) if family.label not in families else None
                names.append(m) if m not in names else None
    counts = {s: sum(c.status == s for row in full.values() for c in row.values()) for s in mark}
    summary = (f"{len(FAMILIES)} families × {len(cols)} methods = {len(FAMILIES) * len(cols)} cells: {counts[WORKS]} "
               f"work (✓), {counts[DIFFERS]} work with a stated difference (✓*), {counts[REFUSED]} are refused (✗) in "
               "one line before the model loads.")
    bullets = []
    for (status, reason), (families, names) in notes.items():
        reason = reason.split("\0", 1)[-1]
        what = "works with a difference" if status == DIFFERS else "refused"
        bullets.append(f"- {', '.join(f'`{n}`' for n in names)} on {', '.join(families)}: {what}: "
                       f"{'the method ' if not reason.startswith(tuple(cols)) else ''}{reason}.")
    return "\n".join([*lines, "", summary, "", *bullets])


def model_configs_markdown() -> str:
    """The model configs of ``conf/model/``: each one's family (its row above), chat template and stop tokens."""
    from omegaconf import OmegaConf

    from kvbench.config import CONF_DIR

    lines = ["| model config | pretrained | family (row) | chat template | stop tokens |", "|---|---|---|---|---|"]
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        stops = " ".join(f"`{t}`".replace("|", "\\|") for t in cfg.get("stop_tokens") or [])
        lines.append(f"| `{path.stem}` | `{cfg.pretrained}` | `{cfg.get('family')}` | "
                     f"{cfg.get('chat_template') or '—'} | {stops or '—'} |")
    return "\n".join(lines)


def readme_section() -> str:
    """What the README holds between its support-matrix markers (written by ``python -m kvbench.readme``)."""
    return support_markdown() + "\n\nThe model configs (`conf/model/`), each with its row above:\n\n" + model_configs_markdown()


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(readme_section() + "\n")
