import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: thread hand-offs cost more than they bring (10-50x slower on a busy
    machine). Tests about threads set their own counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(name="gained-mbt2018-mean", lambdas=(0.0067, 0.013, 0.025, 0.0483), y_boost=0.0, seed=None, **kw):
    """A tiny model with random (non-trivial) gains, ready to code.

    ``y_boost`` is added to the log gains of ``y`` (larger latents: many non-zero
    symbols); ``seed`` makes the model independent of earlier random draws.
    """
    if seed is not None:
        torch.manual_seed(seed)
    net = gainedvae.get_model(name, N=16, M=16, lambdas=lambdas, **kw)
    if gainedvae.is_gained(net):
        with torch.no_grad():
            for m in (net.gain.y, net.gain.y_inv, net.gain.z, net.gain.z_inv):
                m.log_gain.normal_(0, 0.5)
            net.gain.y.log_gain.add_(y_boost)
    net.update(force=True)
    return net.eval()


@pytest.fixture
def image_dir(tmp_path):
    """Six small random images of different sizes."""
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(80, 96), (70, 64), (96, 96), (64, 80), (90, 72), (50, 40)]):
        smooth = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        arr = (255 * np.clip(smooth + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)).astype("uint8")
        Image.fromarray(arr).save(d / f"img{i}.png")
    return d
