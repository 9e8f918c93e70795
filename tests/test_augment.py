import numpy as np
from PIL import Image

from geovario.augment import geoclip_train_view, random_resized_crop_box, view_rng
from geovario.backbones import Preprocess


def test_crop_boxes_follow_torchvision_bounds():
    rng = np.random.default_rng(0)
    for width, height in [(640, 480), (100, 1000), (50, 50)]:
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(width, height, rng)
            assert 0 <= left and 0 <= top and left + w <= width and top + h <= height and w > 0 and h > 0
            if (w, h) != (width, height):
                assert 0.08 * width * height * 0.9 <= w * h  # area at least 8%, up to rounding


def test_views_are_seeded_per_image_and_view():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    preprocess = Preprocess()
    a = geoclip_train_view(image, view_rng(0, 5, 0), preprocess)
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    np.testing.assert_array_equal(a, geoclip_train_view(image, view_rng(0, 5, 0), preprocess))
    assert not np.array_equal(a, geoclip_train_view(image, view_rng(0, 5, 1), preprocess))
    assert not np.array_equal(a, geoclip_train_view(image, view_rng(1, 5, 0), preprocess))


def test_grayscale_and_flip_rates():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    grey = 0
    for i in range(300):
        view = geoclip_train_view(image, view_rng(0, i, 0), Preprocess(resize=32, crop=32))
        pixels = view * np.array(Preprocess().std)[:, None, None] + np.array(Preprocess().mean)[:, None, None]
        grey += np.allclose(pixels[0], pixels[1], atol=1e-5) and np.allclose(pixels[1], pixels[2], atol=1e-5)
    assert 0.12 < grey / 300 < 0.28  # RandomGrayscale(p=0.2)
