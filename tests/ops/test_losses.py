import torch


def test_loss_window_keeps_the_aspect_ratio():
    """A tall, narrow body box (a side view) is cropped, not resized to a square: the figure inside keeps
    its width/height ratio; boxes of one batch grow to a common size about their own centres."""
    from threestudio.ops.losses import alpha_bbox, common_size_boxes, crop_boxes

    img = torch.zeros(2, 64, 96, 3)
    img[0, 10:40, 20:30] = 1.0  # 10 wide x 30 tall
    img[1, 20:34, 50:90] = 1.0  # 40 wide x 14 tall
    boxes = [alpha_bbox(img[i, ..., :1], margin=0.0) for i in range(2)]
    assert boxes == [[20, 10, 30, 40], [50, 20, 90, 34]]
    assert common_size_boxes(boxes, 96, 64) == [[5, 10, 45, 40], [50, 12, 90, 42]]
    crops = crop_boxes(img, boxes)
    assert crops.shape == (2, 3, 30, 40)
    for i, (w, h) in enumerate(((10, 30), (40, 14))):
        ys, xs = torch.nonzero(crops[i, 0] > 0.5, as_tuple=True)
        assert (int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1) == (w, h)  # exact pixels, no stretch
    half = crop_boxes(img, boxes, 0.5)
    assert half.shape == (2, 3, 15, 20)
    ys, xs = torch.nonzero(half[0, 0] > 0.25, as_tuple=True)
    ratio = (int(ys.max() - ys.min()) + 1) / (int(xs.max() - xs.min()) + 1)
    assert 2.0 <= ratio <= 4.0  # ~3, as in the render (a square resize made it ~1)


def test_common_box_size_rounds_up_to_a_multiple_and_keeps_every_box():
    """``multiple`` rounds the common crop size up (capped at the image), every grown box still holds its
    alpha box and stays inside the image; over many random batches of a ring's boxes the rounded sizes
    take far fewer distinct values than the exact ones (each new size costs cuDNN new plans)."""
    import random

    import pytest

    from threestudio.ops.losses import common_size_boxes

    boxes = [[300, 40, 700, 980], [410, 60, 610, 1000]]
    out = common_size_boxes(boxes, 1024, 1024, multiple=64)
    assert {(b[2] - b[0], b[3] - b[1]) for b in out} == {(448, 960)}  # 400 -> 448, 940 -> 960
    assert common_size_boxes([[0, 10, 100, 995]], 1024, 1000, multiple=64) == [[0, 0, 128, 1000]]  # the image caps it
    for (x0, y0, x1, y1), (a0, b0, a1, b1) in zip(boxes, out, strict=True):
        assert a0 <= x0 and b0 <= y0 and a1 >= x1 and b1 >= y1
        assert 0 <= a0 and 0 <= b0 and a1 <= 1024 and b1 <= 1024
    assert common_size_boxes(boxes, 1024, 1024, multiple=1) == common_size_boxes(boxes, 1024, 1024)
    with pytest.raises(ValueError, match="multiple"):
        common_size_boxes(boxes, 1024, 1024, multiple=0)
    rng = random.Random(0)
    ring = [[512 - w // 2, 50 + i % 5, 512 + w // 2 + i % 3, 990 - i % 7] for i, w in enumerate(range(300, 620, 10))]

    def sizes(multiple):
        seen = set()
        for _ in range(800):
            b = common_size_boxes(rng.sample(ring, 4), 1024, 1024, multiple)[0]
            seen.add((b[2] - b[0], b[3] - b[1]))
        return len(seen)

    exact, rounded = sizes(1), sizes(64)
    assert rounded <= 6 < 40 <= exact


def test_ssim_loss_uses_pytorch_msssims_window_made_once():
    """The cached window is pytorch-msssim's own default (the same loss to the last bit as letting it
    make the window in each call), and it is made once per device and channel count."""
    from pytorch_msssim import ssim

    from threestudio.ops.losses import ssim_loss, ssim_window

    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 40, 56, generator=gen), torch.rand(2, 3, 40, 56, generator=gen)
    ref = 1.0 - ssim(x, y, data_range=1.0, size_average=True)
    torch.testing.assert_close(ssim_loss(x, y), ref, rtol=0, atol=0)
    assert ssim_window(3, x.device) is ssim_window(3, x.device)
    assert ssim_window(3, x.device).shape == (3, 1, 1, 11)
