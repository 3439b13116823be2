"""Turn one prompt string into ``(context_ids, query_ids)`` for the compression protocol.

LongBench and the synthetic tasks write a single prompt, as their reference code does,
and mark where the document ends. The prompt is tokenised *whole* (so the token
sequence is exactly the one the reference code feeds the model); the split point is the
longest common token prefix of the whole prompt and of the text before the boundary. A
token that straddles the boundary therefore goes to the query, never half to each side.
"""

from __future__ import annotations


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
