"""Prompt helpers every suite shares: chat templates, the context/query split, end-of-sequence ids.

LongBench and the RULER-style tasks write a single prompt, as their reference code does,
and mark where the document ends. The prompt is tokenised *whole* (so the token
sequence is exactly the one the reference code feeds the model); the split point is the
longest common token prefix of the whole prompt and of the text before the boundary. A
token that straddles the boundary therefore goes to the query, never half to each side.
"""

from __future__ import annotations

import logging

from kvbench.errors import SuiteConfigError

log = logging.getLogger(__name__)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_wrap(tokenizer, text: str) -> str:
    """``text`` as a single user turn in the tokenizer's chat template, ready for the answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_split(tokenizer, text: str, boundary: int, add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """Tokenise ``text`` and split the ids where the characters before ``boundary`` end."""
    ids = encode(tokenizer, text, add_special_tokens)
    if boundary >= len(text):
        return ids, []
    head = encode(tokenizer, text[:boundary], add_special_tokens)
    n = 0
    for a, b in zip(ids, head):
        if a != b:
            break
        n += 1
    return ids[:n], ids[n:]


def resolve_chat(tokenizer, model_cfg, forced: bool | None) -> bool:
    """Whether prompts get the chat template: ``forced`` (``suite.options.chat_template``) if set, else
    ``model.chat`` when the tokenizer has a template."""
    if forced is True and not has_chat_template(tokenizer):
        raise SuiteConfigError("suite.options.chat_template=true but the tokenizer has no chat template "
                               "(choose false or null)")
    if forced is not None:
        return forced
    if getattr(model_cfg, "chat", False) and not has_chat_template(tokenizer):
        log.warning("model.chat=true but the tokenizer has no chat template: prompts are used without one")
        return False
    return bool(getattr(model_cfg, "chat", False))


def eos_ids(tokenizer, model) -> list[int]:
    """Every end-of-sequence id: the tokenizer's and the model's generation config's."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)
