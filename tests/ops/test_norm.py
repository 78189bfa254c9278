import pytest
import torch
import torch.nn.functional as F

from threestudio.ops.norm import group_norm_channel_stats


@pytest.mark.parametrize(
    "shape,groups,layout",
    [
        ((2, 64, 16, 16), 32, torch.contiguous_format),
        ((2, 64, 16, 16), 32, torch.channels_last),
        ((3, 12, 7, 9), 4, torch.contiguous_format),
        ((2, 128, 40), 32, None),  # [B, C, L]: the VAE attention's GroupNorm
        ((2, 6, 3, 4, 5), 3, None),
    ],
)
def test_same_function_and_gradient_as_torch_group_norm(shape, groups, layout):
    """Forward and input / weight / bias gradients equal float64 F.group_norm as closely as float32
    F.group_norm does, for inputs whose mean is large against their spread (where a one-pass
    E[x²] - E[x]² would lose digits)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 0.5 + 20.0
    if layout is not None:
        x = x.contiguous(memory_format=layout)
    w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    up = torch.randn(shape, generator=g)
    outs = []
    cases = ((group_norm_channel_stats, torch.float32), (F.group_norm, torch.float32), (F.group_norm, torch.float64))
    for fn, dtype in cases:
        xs, ws, bs = (v.to(dtype).requires_grad_() for v in (x, w, b))
        y = fn(xs, groups, ws, bs, 1e-6)
        grads = torch.autograd.grad((y * up.to(dtype)).sum(), (xs, ws, bs))
        outs.append([v.double() for v in (y, *grads)])
    for ours, torch32, exact in zip(*outs, strict=True):
        scale = exact.abs().max()
        assert (ours - exact).abs().max() <= 2 * (torch32 - exact).abs().max() + 1e-6 * scale
        assert (ours - exact).abs().max() <= 5e-5 * scale
    assert outs[0][0].abs().max() > 1  # normalised: not a trivially small output


def test_bf16_is_as_close_to_float32_as_torch():
    """In bf16 (the GPU dtype) the output is the float32 GroupNorm rounded once: no larger error
    than PyTorch's own bf16 GroupNorm. Without affine parameters, layout kept."""
    x = (torch.randn(2, 32, 8, 8) * 3 + 1).contiguous(memory_format=torch.channels_last)
    ref = F.group_norm(x, 8)
    ours = group_norm_channel_stats(x.bfloat16(), 8)
    assert ours.dtype == torch.bfloat16 and ours.is_contiguous(memory_format=torch.channels_last)
    err, torch_err = (ours.float() - ref).abs().max(), (F.group_norm(x.bfloat16(), 8).float() - ref).abs().max()
    assert err <= max(torch_err, 2**-7 * ref.abs().max())


def test_bad_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match="do not divide 10 channels"):
        group_norm_channel_stats(torch.randn(1, 10, 4, 4), 4)
    with pytest.raises(ValueError, match="must be"):
        group_norm_channel_stats(torch.randn(2, 8), 4)
