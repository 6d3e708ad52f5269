"""Loading an encoder draws from its own random stream, not the global one."""

import numpy as np
import torch

from sklearn_cl3d import YAwarePretrainer, load_pretrained


def test_load_pretrained_leaves_the_global_rng_alone(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 5)).astype(np.float32)
    age = rng.uniform(20, 80, size=16)
    est = YAwarePretrainer(
        backbone="mlp", max_epochs=1, batch_size=8, device="cpu", random_state=3
    ).fit(X, age)
    est.save_pretrained(tmp_path / "enc")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loaded = load_pretrained(tmp_path / "enc", device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_allclose(loaded.transform(X), est.transform(X), rtol=1e-6)
