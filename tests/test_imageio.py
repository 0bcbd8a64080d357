"""One 8-bit conversion for the codec, the training data and the evaluation (gainedvae.imageio)."""

import numpy as np
from PIL import Image

from gainedvae import data, evaluate, imageio


def test_16_bit_images_are_read_alike_everywhere(tmp_path):
    values = np.array([[0, 128, 384, 500, 32896, 65279, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16 on reading
    expected = np.rint(values / 257).astype(np.uint8)  # 0..65535 onto 0..255, both ends fixed
    assert expected.tolist() == [[0, 0, 1, 2, 128, 254, 255]]
    codec_rgb = imageio.load_image(path)
    train_rgb = np.asarray(data.load_rgb(str(path)))
    eval_rgb = evaluate.read_image(path)[0].permute(1, 2, 0).numpy()
    for rgb in (codec_rgb, train_rgb, eval_rgb):
        assert rgb.shape == (1, 7, 3) and (rgb == expected[..., None]).all()
