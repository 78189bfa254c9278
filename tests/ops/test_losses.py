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
