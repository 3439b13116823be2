"""Model configs state how a generation ends: every ``conf/model`` config names its stop tokens, chat template and
support-matrix family, checked against the tokenizer where one ships offline (the bundled SmolLM2 GGUF)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kvbench.compose import compose_config
from kvbench.config import CONF_DIR, ModelConfig
from kvbench.errors import ModelLoadError
from kvbench.eval.prompts import eos_ids
from kvbench.models import byte_tokenizer, load_model, stop_token_ids
from kvbench.support import FAMILIES

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_states_its_stop_tokens_family_and_chat_template(name):
    cfg = compose_config([f"model={name}"]).model
    assert cfg.stop_tokens, f"model={name} states no stop tokens"
    assert cfg.family in FAMILIES
    if not cfg.pretrained.startswith("tiny:"):  # the tiny models' byte tokenizer has no template
        assert (cfg.chat_template is not None) == cfg.chat, f"model={name}: a chat model names its template, a base none"


@pytest.mark.parametrize("name", ["llama3_8b_instruct", "llama3_1_8b_instruct"])
def test_llama3_stops_on_both_end_of_turn_and_end_of_text(name):
    stops = compose_config([f"model={name}"]).model.stop_tokens
    assert {"<|eot_id|>", "<|end_of_text|>"} <= set(stops) and "\n" not in stops


def test_the_bundled_smollm2_stop_tokens_are_tokens_of_its_own_tokenizer_with_its_eos_first(smollm2_shared):
    cfg = OmegaConf.to_object(compose_config(["model=smollm2_135m"]).model)
    tokenizer = smollm2_shared[1]  # load_model's tokenizer of the bundled GGUF (parsing it again costs ~10 s)
    assert cfg.stop_tokens[0] == tokenizer.eos_token == "<|im_end|>"
    assert stop_token_ids(tokenizer, cfg) == [tokenizer.convert_tokens_to_ids(t) for t in cfg.stop_tokens]
    assert cfg.chat_template == "chatml" and "<|im_start|>" in tokenizer.chat_template


def test_a_stop_token_the_tokenizer_does_not_know_is_one_line():
    cfg = ModelConfig(name="tiny", pretrained="tiny:llama-gqa", stop_tokens=["<|eot_id|>"])
    with pytest.raises(ModelLoadError, match=r"model.stop_tokens: '<\|eot_id\|>' is not a token of tiny's tokenizer"):
        stop_token_ids(byte_tokenizer(), cfg)


def test_a_loaded_model_ends_generation_on_every_stop_token():
    cfg = ModelConfig(name="tiny", pretrained="tiny:llama-gqa", gguf_file=None, stop_tokens=["</s>", "<pad>"])
    model, tokenizer = load_model(cfg)
    assert eos_ids(tokenizer, model) == [257, 258]  # </s> (the tokenizer's EOS) and <pad> (a stated stop)
