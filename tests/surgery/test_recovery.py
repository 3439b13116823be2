"""LoRA recovery after head surgery: it trains, its adapter is cached by settings and reused, bad settings are one line."""

from __future__ import annotations

import copy

import pytest
import torch

from kvbench.errors import MethodConfigError
from kvbench.methods import build_method
from kvbench.surgery import recovery
from tests.conftest import random_ids

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from kvbench.corpus import load_texts

    path = tmp_path_factory.mktemp("corpus") / "pydoc_excerpt.txt"
    path.write_text("\n\n".join(load_texts("pydoc", split="calibration")[:6]))
    return str(path)


def _lora(corpus, **changes):
    return dict(dict(rank=4, alpha=8.0, steps=3, lr=1e-3, seq_len=32, batch_size=2, corpus=corpus), **changes)


def test_training_lowers_the_loss_on_the_corpus(tiny_gqa, small_corpus):
    from kvbench.surgery.heads import meanpool_kv_heads

    model, tok = tiny_gqa
    peft = recovery.import_peft()
    pooled = meanpool_kv_heads(copy.deepcopy(model), 1)
    settings = recovery.LoRASettings(**_lora(small_corpus, steps=30, lr=1e-2, batch_size=4))
    losses = recovery.train(peft.get_peft_model(pooled, recovery._lora_config(peft, settings)), tok, settings)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05


def test_the_adapter_is_cached_by_settings_and_reused_without_training(tiny_gqa, small_corpus, monkeypatch):
    model, tok = tiny_gqa
    trained = []
    real_train = recovery.train
    monkeypatch.setattr(recovery, "train", lambda *a: trained.append(1) or real_train(*a))
    method = build_method("meanpool_gqa", kv_heads=1, recovery="lora", lora=_lora(small_corpus))
    first = method.apply(copy.deepcopy(model), tok)
    assert trained == [1] and len(list(recovery.recovery_dir().glob("lora-*.pt"))) == 1
    # the merged model is a plain model with 1 KV head that differs from the surgery alone
    plain = build_method("meanpool_gqa", kv_heads=1).apply(copy.deepcopy(model), tok)
    assert first.config.num_key_value_heads == 1 and not hasattr(first, "peft_config")
    ids = random_ids(20)
    assert not torch.allclose(first(ids).logits, plain(ids).logits, atol=1e-4)
    # same settings: loaded from disk, not trained, same weights
    again = build_method("meanpool_gqa", kv_heads=1, recovery="lora", lora=_lora(small_corpus)).apply(
        copy.deepcopy(model), tok)
    assert trained == [1]
    torch.testing.assert_close(again(ids).logits, first(ids).logits, atol=0, rtol=0)
    # another setting (or another surgery) is another adapter
    build_method("meanpool_gqa", kv_heads=1, recovery="lora", lora=_lora(small_corpus, steps=4)).apply(
        copy.deepcopy(model), tok)
    build_method("svd_gqa", kv_heads=1, init="weight", recovery="lora", lora=_lora(small_corpus)).apply(
        copy.deepcopy(model), tok)
    assert trained == [1, 1, 1] and len(list(recovery.recovery_dir().glob("lora-*.pt"))) == 3


def test_svd_recovery_off_the_disk_cache_retrains(tiny_gqa, small_corpus, monkeypatch):
    model, tok = tiny_gqa
    trained = []
    real_train = recovery.train
    monkeypatch.setattr(recovery, "train", lambda *a: trained.append(1) or real_train(*a))
    for _ in range(2):
        build_method("svd_gqa", kv_heads=1, init="weight", recovery="lora", reuse_calibration=False,
                     lora=_lora(small_corpus)).apply(copy.deepcopy(model), tok)
    assert trained == [1, 1] and not recovery.recovery_dir().exists()


@pytest.mark.parametrize("lora, message", [
    (dict(rank=0), "method.lora.rank=0 must be an integer >= 1"),
    (dict(steps=2.5), "method.lora.steps=2.5 must be an integer >= 1"),
    (dict(seq_len=1), "method.lora.seq_len=1 must be an integer >= 2"),
    (dict(alpha=0), "method.lora.alpha=0 must be > 0"),
    (dict(lr=0.0), "method.lora.lr=0.0 must lie in (0, 1]"),
    (dict(target_modules=" "), "method.lora.target_modules is empty"),
    (dict(corpus="./no/such.txt"), "method.lora.corpus: corpus file './no/such.txt' does not exist"),
    (dict(rnak=4), "method.lora has no setting rnak (valid: rank, alpha"),
])
def test_out_of_range_lora_settings_are_one_line(lora, message):
    with pytest.raises(MethodConfigError) as error:
        build_method("meanpool_gqa", recovery="lora", lora=lora)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_lora_settings_are_part_of_the_parameters_only_with_recovery():
    plain = build_method("svd_gqa", lora={"steps": 5})
    assert "lora" not in plain.params() and plain.changed_params() == {}  # unused: one run, one label
    recovered = build_method("svd_gqa", recovery="lora", lora={"steps": 5})
    assert recovered.params()["lora"]["steps"] == 5
    assert recovered.changed_params() == {"recovery": "lora", "lora": {"steps": 5}}
