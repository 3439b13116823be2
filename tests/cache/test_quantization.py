"""The quantizer on hand-built tensors: half-step error, exact constant groups, KIVI's grouping axes, lossless
packing, scales in the states' dtype and the byte formula."""

from __future__ import annotations

import pytest
import torch

from kvbench.cache.quantization import dequantize, pack, quantize, quantized_nbytes, unpack


def _expand(scale: torch.Tensor, grouping: str, group_size: int) -> torch.Tensor:
    """One group's value per element of the states (to compare errors with the step size)."""
    return scale.repeat_interleave(group_size, dim=-2 if grouping == "channel" else -1)


def _states(seed=0, shape=(2, 3, 64, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * torch.logspace(-2, 1, shape[-1])  # channels of very different size


@pytest.mark.parametrize("nbits", [2, 4])
@pytest.mark.parametrize("grouping", ["channel", "token"])
def test_dequantized_values_lie_within_half_a_step_of_the_originals(nbits, grouping):
    x = _states()
    q = quantize(x, nbits, grouping, 8)
    step = _expand(q.scale, grouping, 8)
    err = (dequantize(q, nbits, grouping, 8) - x).abs()
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all()
    assert (err > step / 4).any()  # the bound is tight, not vacuous


@pytest.mark.parametrize("grouping", ["channel", "token"])
def test_a_constant_group_round_trips_exactly(grouping):
    x = _states(seed=1)
    x[..., :8, :] = 3.25 if grouping == "channel" else x[..., :8, :]  # the first token group of every channel
    if grouping == "token":
        x[..., :8] = -0.7  # the first channel group of every token
    q = quantize(x, 2, grouping, 8)
    y = dequantize(q, 2, grouping, 8)
    const = (slice(None), slice(None), slice(0, 8)) if grouping == "channel" else (..., slice(0, 8))
    assert torch.equal(y[const], x[const])
    first = q.scale[:, :, 0] if grouping == "channel" else q.scale[..., 0]
    assert (first == 0).all()


@pytest.mark.parametrize("nbits", [2, 4])
def test_packing_and_unpacking_2_and_4_bit_codes_is_lossless(nbits):
    codes = torch.arange(2**nbits, dtype=torch.uint8).repeat(3, 8)[:, torch.randperm(8 * 2**nbits)]
    packed = pack(codes, nbits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, codes.shape[-1] * nbits // 8)
    assert torch.equal(unpack(packed, nbits), codes)
    every_byte = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(pack(unpack(every_byte, nbits), nbits), every_byte)


def test_keys_group_per_channel_over_tokens_and_values_per_token_over_channels():
    x = _states(seed=2)  # [B=2, h=3, N=64, d=16]
    keys, values = quantize(x, 2, "channel", 8), quantize(x, 2, "token", 8)
    assert keys.scale.shape == (2, 3, 8, 16)  # one (s, z) per channel and per 8 consecutive tokens
    assert values.scale.shape == (2, 3, 64, 2)  # one (s, z) per token and per 8 consecutive channels
    torch.testing.assert_close(keys.zero[0, 1, 2, 5], x[0, 1, 16:24, 5].min())
    torch.testing.assert_close(keys.scale[0, 1, 2, 5], (x[0, 1, 16:24, 5].max() - x[0, 1, 16:24, 5].min()) / 3)
    torch.testing.assert_close(values.zero[0, 1, 20, 1], x[0, 1, 20, 8:16].min())
    torch.testing.assert_close(values.scale[0, 1, 20, 1], (x[0, 1, 20, 8:16].max() - x[0, 1, 20, 8:16].min()) / 3)


def test_swapping_the_axes_changes_the_error_on_keys_with_outlier_channels():
    """KIVI's observation (Sec. 3): key outliers live in fixed channels, so per-channel groups isolate them;
    per-token groups give every group an outlier's range and crush the other channels."""
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 2, 128, 32, generator=g)
    keys[..., [3, 17]] *= 30  # outlier channels
    keys[..., [3, 17]] += 40
    values = torch.randn(1, 2, 128, 32, generator=g)

    def error(x, grouping):
        """Mean over channels of the relative error ‖x̂_c − x_c‖ / ‖x_c‖ (every channel counts, not only big ones)."""
        err = dequantize(quantize(x, 2, grouping, 32), 2, grouping, 32) - x
        return (err.square().sum((0, 1, 2)).sqrt() / x.square().sum((0, 1, 2)).sqrt()).mean().item()

    kivi = error(keys, "channel") + error(values, "token")
    swapped = error(keys, "token") + error(values, "channel")
    assert error(keys, "channel") * 5 < error(keys, "token")
    assert kivi * 3 < swapped


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scales_are_stored_in_the_states_dtype_and_codes_come_from_the_stored_scales(dtype):
    x = _states(seed=4).to(dtype)
    q = quantize(x, 4, "token", 8)
    assert q.scale.dtype == q.zero.dtype == dtype
    xg = x.float().view(2, 3, 64, 2, 8)
    # every value within reach of the stored (rounded) scale: z + 15·s ≥ max(x)
    assert (q.zero.float() + 15 * q.scale.float() >= xg.amax(-1)).all()
    codes = ((xg - q.zero.float()[..., None]) / q.scale.float()[..., None]).round().clamp(0, 15).to(torch.uint8)
    assert torch.equal(pack(codes.view(x.shape), 4), q.codes)


@pytest.mark.parametrize("nbits", [2, 4])
@pytest.mark.parametrize("grouping", ["channel", "token"])
def test_bytes_of_quantized_tokens_are_codes_plus_scales_plus_zero_points(nbits, grouping):
    x = _states(seed=5).half()
    q = quantize(x, nbits, grouping, 8)
    measured = sum(t.element_size() * t.nelement() for t in q)
    assert measured == quantized_nbytes(64, 3, 16, nbits, 8, elem=2, batch=2)
    assert measured == 2 * 3 * 64 * 16 * (nbits / 8 + 2 * 2 / 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nbits", [2, 4])
@pytest.mark.parametrize("grouping", ["channel", "token"])
def test_the_table_lookup_dequantizes_exactly_as_unpacking_then_scaling(dtype, nbits, grouping):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(nbits)).to(dtype)
    q = quantize(x, nbits, grouping, 4)
    dim = -2 if grouping == "channel" else -1
    shape = (2, 3, 4, 4, 16) if grouping == "channel" else (2, 3, 16, 4, 4)
    want = unpack(q.codes, nbits).to(dtype).view(shape).mul_(q.scale.unsqueeze(dim)).add_(q.zero.unsqueeze(dim))
    assert torch.equal(dequantize(q, nbits, grouping, 4), want.view(x.shape))
    longer = torch.full((2, 3, 20, 16), float("nan"), dtype=dtype)  # into the first 16 tokens of a longer buffer
    dequantize(q, nbits, grouping, 4, out=longer[:, :, :16])
    assert torch.equal(longer[:, :, :16], want.view(x.shape)) and longer[:, :, 16:].isnan().all()
