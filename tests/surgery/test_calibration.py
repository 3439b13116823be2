"""Streaming covariances, eigenvectors and the on-disk projection cache of kvbench.surgery.calibration."""

import copy
import logging

import pytest
import torch
from transformers import DynamicCache

from kvbench.surgery import calibration
from kvbench.surgery.calibration import (CalibrationSpec, cache_dir, calibration_ids, kv_covariances,
                                         load_or_calibrate, projections_key, top_eigenvectors)


@pytest.fixture
def prose_file(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 3
                                for i in range(40)))
    return str(path)


def test_calibration_sequences_are_fixed_length_chunks_drawn_by_seed(tiny_gqa, prose_file):
    _, tok = tiny_gqa
    a = calibration_ids(tok, CalibrationSpec(prose_file, n_sequences=5, seq_len=32, seed=0))
    b = calibration_ids(tok, CalibrationSpec(prose_file, n_sequences=5, seq_len=32, seed=0))
    c = calibration_ids(tok, CalibrationSpec(prose_file, n_sequences=5, seq_len=32, seed=1))
    assert a.shape == (5, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_streamed_covariance_equals_covariance_of_all_cached_keys_and_values(tiny_gqa):
    model, _ = tiny_gqa
    ids = torch.randint(0, 256, (5, 12), generator=torch.Generator().manual_seed(0))
    covs = kv_covariances(model, ids, groups=1, batch_size=2)  # 3 batches, streamed
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    for layer, (cov_k, cov_v) in zip(cache.layers, covs):
        for states, cov in ((layer.keys, cov_k), (layer.values, cov_v)):
            x = states.double().permute(0, 2, 1, 3).reshape(5 * 12, 2 * 16)  # tokens x (head0 | head1)
            assert cov.shape == (1, 32, 32)
            torch.testing.assert_close(cov[0], x.T @ x)


def test_top_eigenvectors_are_orthonormal_rows_spanning_a_low_rank_signal():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 3, dtype=torch.float64, generator=gen))[0]  # rank-3 data
    x = torch.randn(100, 3, dtype=torch.float64, generator=gen) @ basis.T
    psi = top_eigenvectors((x.T @ x)[None], 3)[0]
    torch.testing.assert_close(psi @ psi.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(x @ psi.T @ psi, x)  # projection onto the top-3 subspace is lossless


def test_second_run_loads_projections_from_disk_without_calibrating(tiny_gqa, prose_file, monkeypatch, caplog):
    model, tok = tiny_gqa
    spec = CalibrationSpec(prose_file, n_sequences=4, seq_len=32)
    first = load_or_calibrate(model, tok, spec, groups=1, head_dim=16)
    assert len(list(cache_dir().glob("svd_gqa-*.pt"))) == 1

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration must not run when the projections are on disk")

    monkeypatch.setattr(calibration, "calibrate", no_calibration)
    with caplog.at_level(logging.INFO, logger="kvbench.surgery.calibration"):
        second = load_or_calibrate(model, tok, spec, groups=1, head_dim=16)
    assert any("calibration skipped" in r.getMessage() for r in caplog.records)
    for (k1, v1), (k2, v2) in zip(first, second):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_cache_key_depends_on_weights_settings_and_corpus(tiny_gqa, prose_file, tmp_path):
    model, tok = tiny_gqa
    spec = CalibrationSpec(prose_file, n_sequences=4, seq_len=32)
    key = projections_key(model, tok, spec, groups=1)
    assert projections_key(model, tok, spec, groups=1) == key
    assert projections_key(model, tok, spec, groups=2) != key
    assert projections_key(model, tok, CalibrationSpec(prose_file, 4, 32, seed=1), groups=1) != key
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.endswith("k_proj.weight")).mul_(2)
    assert projections_key(other, tok, spec, groups=1) != key
    other_text = tmp_path / "other.txt"
    other_text.write_text("Completely different words.\n\n" * 50)
    assert projections_key(model, tok, CalibrationSpec(str(other_text), 4, 32), groups=1) != key
