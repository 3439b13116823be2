"""svd_gqa: identity when g = h, exact on duplicated heads (RoPE and fused paths), real g-head cache,
calibration reused from disk, clear errors before calibration."""

import copy
import logging
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from kvbench.cache import cache_nbytes, full_cache_nbytes
from kvbench.methods import MethodConfigError, build_method
from kvbench.models import tiny_llama_config
from kvbench.surgery import calibration
from kvbench.surgery.heads import expand_kv_heads
from kvbench.surgery.svd_attention import SVDRopeAttention
from tests.conftest import method_from_config, random_ids

FAST = dict(calibration_sequences=4, calibration_length=64)  # 256 calibration tokens >> head_dim 16


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A few pages of the default corpus as a local file: same kind of text, faster to tokenise."""
    from kvbench.corpus import load_texts

    path = tmp_path_factory.mktemp("corpus") / "pydoc_excerpt.txt"
    path.write_text("\n\n".join(load_texts("pydoc", split="calibration")[:12]))
    return str(path)


@pytest.fixture(autouse=True)
def _calibration_cache_dir(tmp_path, monkeypatch, small_corpus):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "kvbench-cache"))
    monkeypatch.setitem(FAST, "calibration", small_corpus)


def _nope(model):
    """Turn the tiny Llama into a position-free variant: zero RoPE frequencies = identity rotation."""
    model.model.rotary_emb.inv_freq.zero_()
    return model


def _svd(model, tok, kv_heads, **params):
    return build_method("svd_gqa", kv_heads=kv_heads, **{**FAST, **params}).apply(model, tok)


@pytest.mark.parametrize("init", ["activation", "weight"])
@pytest.mark.parametrize("fixture, kv_heads", [("tiny_gqa", 2), ("tiny_mha", 4)])
@pytest.mark.parametrize("rope", [True, False])
def test_kv_heads_equal_to_the_models_own_reproduces_logits(request, fixture, kv_heads, rope, init):
    model, tok = request.getfixturevalue(fixture)
    if not rope:
        _nope(model)
    reference = model(random_ids(30)).logits
    converted = _svd(copy.deepcopy(model), tok, kv_heads, init=init)
    assert (converted(random_ids(30)).logits - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("init", ["activation", "weight"])
@pytest.mark.parametrize("rope", [True, False])
def test_duplicate_head_model_converted_back_reproduces_original_logits(tiny_gqa, rope, init):
    model, tok = tiny_gqa
    if not rope:
        _nope(model)
    reference = model(random_ids(30)).logits
    mha = expand_kv_heads(copy.deepcopy(model))  # 4 KV heads, pairs of identical heads: rank <= d per group
    converted = _svd(mha, tok, 2, init=init)
    # rope: auto picked the replacement attention exactly when the model rotates keys
    assert isinstance(converted.model.layers[0].self_attn, SVDRopeAttention) == rope
    assert (converted(random_ids(30)).logits - reference).abs().max() <= 1e-4


def test_forced_rotary_path_on_a_position_free_model_is_also_exact(tiny_gqa):
    model, tok = tiny_gqa
    _nope(model)
    reference = model(random_ids(30)).logits
    converted = _svd(expand_kv_heads(copy.deepcopy(model)), tok, 2, rope="rotary")
    assert isinstance(converted.model.layers[0].self_attn, SVDRopeAttention)
    assert (converted(random_ids(30)).logits - reference).abs().max() <= 1e-4


def test_fused_path_stores_g_heads_in_k_proj_and_v_proj(tiny_mha):
    model, tok = tiny_mha
    converted = _svd(_nope(model), tok, 1)
    attn = converted.model.layers[0].self_attn
    assert (attn.k_proj.out_features, attn.v_proj.out_features, attn.q_proj.out_features) == (16, 16, 64)


@pytest.mark.parametrize("rope", [True, False])
def test_generate_works_and_the_cache_holds_g_heads_per_layer(tiny_mha, rope):
    model, tok = tiny_mha
    if not rope:
        _nope(model)
    converted = _svd(model, tok, 1)
    assert converted.config.num_key_value_heads == 1
    cache = DynamicCache(config=converted.config)
    out = converted.generate(random_ids(12), cache=cache, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 18)
    assert all(layer.keys.shape == (1, 1, 17, 16) and layer.values.shape == (1, 1, 17, 16) for layer in cache.layers)
    # generate without a cache given builds its own from the updated config
    assert converted.generate(random_ids(12), max_new_tokens=3, do_sample=False).shape == (1, 15)


@torch.no_grad()
def test_protocol_chunked_prefill_then_decoding_matches_one_forward_and_bytes_are_g_over_h(tiny_mha):
    model, tok = tiny_mha
    full_bytes = full_cache_nbytes(model.config, 40, torch.float32)
    converted = _svd(model, tok, 2)
    ids = random_ids(40)
    one = converted(ids).logits
    cache = DynamicCache(config=converted.config)
    pieces = [converted(input_ids=ids[:, :20], cache=cache, use_cache=True).logits,
              converted(input_ids=ids[:, 20:30], cache=cache, use_cache=True).logits]
    pieces += [converted(input_ids=ids[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(30, 40)]
    torch.testing.assert_close(torch.cat(pieces, 1), one, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == 40
    assert cache_nbytes(cache) * 4 == full_bytes * 2
    copied = copy.deepcopy(cache)  # the evaluator deep-copies caches per continuation
    nxt = random_ids(1, seed=3)
    torch.testing.assert_close(converted(input_ids=nxt, cache=copied).logits,
                               converted(input_ids=nxt, cache=cache).logits)


def test_second_apply_loads_projections_from_disk_and_skips_calibration(tiny_gqa, monkeypatch, caplog):
    model, tok = tiny_gqa
    first = _svd(copy.deepcopy(model), tok, 1)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration must not run twice")

    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    with caplog.at_level(logging.INFO, logger="kvbench.surgery.calibration"):
        second = _svd(copy.deepcopy(model), tok, 1)
    assert any("calibration skipped" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(second(random_ids(20)).logits, first(random_ids(20)).logits, atol=0, rtol=0)
    with pytest.raises(AssertionError, match="must not run twice"):  # other settings: a new calibration
        _svd(copy.deepcopy(model), tok, 1, seed=1)


def test_weight_init_takes_the_top_right_singular_vectors_of_the_group_weights_and_reads_no_text(tiny_mha, monkeypatch):
    model, tok = tiny_mha
    attn = model.model.layers[0].self_attn
    w_group = attn.k_proj.weight.detach().double().view(2, 32, 64)[0]  # group 0 = KV heads 0, 1: [t·d, D]
    _, _, vh = torch.linalg.svd(w_group.T, full_matrices=False)  # W_K,group ∈ R^{D × t·d}: right vectors = rows of vh
    (psi, _), *_ = calibration.weight_bases([attn], 2, 16)
    # same subspace (signs and order within equal singular values may differ): projections agree
    torch.testing.assert_close(psi[0].T @ psi[0], vh[:16].T @ vh[:16], atol=1e-8, rtol=1e-8)

    def no_calibration(*args, **kwargs):
        raise AssertionError("init=weight must not calibrate")

    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    converted = build_method("svd_gqa", kv_heads=2, init="weight").apply(copy.deepcopy(model), None)
    assert converted.config.num_key_value_heads == 2


def test_svd_initialisation_beats_mean_pooling_on_a_low_rank_group(tiny_mha):
    """Heads of a group that share a rank-d subspace (but are not copies) are recovered by SVD, not by the mean."""
    model, tok = tiny_mha
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                w = proj.weight.view(4, 16, 64)
                mix = torch.randn(4, 16, 16, generator=gen) / 4  # head k = M_k · W_(group's first head)
                w.copy_(torch.einsum("kab,kbD->kaD", mix, w[[0, 0, 2, 2]]))
    _nope(model)  # with RoPE the rotation breaks this shared subspace; fused keys are exact here
    reference = model(random_ids(30)).logits
    svd = _svd(copy.deepcopy(model), tok, 2)
    mean = build_method("meanpool_gqa", kv_heads=2).apply(copy.deepcopy(model), tok)
    assert (svd(random_ids(30)).logits - reference).abs().max() <= 1e-4
    assert (mean(random_ids(30)).logits - reference).abs().max() > 1e-2


@pytest.mark.parametrize("params, message", [
    (dict(kv_heads=0), "method.kv_heads=0 must be a positive"),
    (dict(kv_heads=-2), "method.kv_heads=-2 must be a positive"),
    (dict(calibration="/no/such/corpus.txt"), "does not exist"),
    (dict(calibration="./no/such/corpus_dir"), "corpus file './no/such/corpus_dir' does not exist"),
    (dict(calibration_sequences=0), "method.calibration_sequences=0"),
    (dict(rope="alibi"), "method.rope='alibi' is not valid"),
    (dict(init="random"), "method.init='random' is not valid \\(choose one of: activation, weight\\)"),
])
def test_bad_parameters_are_rejected_at_construction(params, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("svd_gqa", **params)


@pytest.mark.parametrize("kv_heads, message", [(3, "must divide the model's 4 KV heads"), (5, "is larger than")])
def test_kv_heads_that_do_not_fit_the_model_are_rejected_before_calibration(kv_heads, message):
    with pytest.raises(MethodConfigError, match=message):
        build_method("svd_gqa", kv_heads=kv_heads).check_model(tiny_llama_config("llama-mha"))


def test_calibration_on_a_local_jsonl_file(tiny_gqa, tmp_path):
    model, tok = tiny_gqa
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(f'{{"text": "record {i}: a sentence about keys, values and heads."}}'
                              for i in range(60)))
    converted = _svd(model, tok, 1, calibration=str(path), calibration_length=32)
    assert converted.config.num_key_value_heads == 1
    assert torch.isfinite(converted(random_ids(10)).logits).all()


def test_hydra_config_composes_to_a_working_method(tiny_gqa):
    method = method_from_config("method=svd_gqa", "method.calibration_sequences=2", "method.calibration_length=32")
    assert (method.name, method.kv_heads, method.calibration, method.rope) == ("svd_gqa", 1, "pydoc", "auto")  # default corpus
    model, tok = tiny_gqa
    method.check_model(model.config)
    assert method.apply(model, tok).config.num_key_value_heads == 1


# ---------------------------------------------------------------------------------------------
# Bundled model (short)


@torch.no_grad()
def test_bundled_model_at_one_kv_head_caches_one_head_per_layer_a_third_of_full(smollm2):
    model, tok = smollm2
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    full_bytes = full_cache_nbytes(model.config, ids.shape[1], torch.float32)
    converted = _svd(model, tok, 1, calibration="pydoc", calibration_sequences=1, calibration_length=64)
    assert isinstance(converted.model.layers[0].self_attn, SVDRopeAttention)  # SmolLM2 uses RoPE
    cache = DynamicCache(config=converted.config)
    logits = converted(ids, cache=cache).logits
    assert torch.isfinite(logits).all()
    assert [tuple(layer.keys.shape[:2]) for layer in cache.layers] == [(1, 1)] * 30
    assert cache_nbytes(cache) * 3 == full_bytes
