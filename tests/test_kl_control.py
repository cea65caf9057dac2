"""KL controllers: Ziegler et al.'s update by hand, and exact resume from a state dict."""

import pytest

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.kl_control import AdaptiveKL, FixedKL


def test_fixed_kl_never_moves():
    controller = FixedKL(0.05)
    controller.update(observed_kl=100.0, n_samples=64)
    assert controller.coef == 0.05
    restored = FixedKL(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.coef == 0.05
    with pytest.raises(ConfigError, match="coef=-0.1 must be >= 0"):
        FixedKL(-0.1)


def test_adaptive_kl_by_hand():
    controller = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
    # KL 9: error 9/6 - 1 = 0.5, clipped to 0.2 -> coef 0.1 (1 + 0.2 * 256 / 10000) = 0.100512
    controller.update(observed_kl=9.0, n_samples=256)
    assert controller.coef == pytest.approx(0.100512)
    # KL 5.4: error -0.1 (inside the clip) -> coef *= 1 - 0.1 * 0.0256 = 0.99744
    controller.update(observed_kl=5.4, n_samples=256)
    assert controller.coef == pytest.approx(0.100512 * 0.99744)
    # on target: unchanged
    before = controller.coef
    controller.update(observed_kl=6.0, n_samples=256)
    assert controller.coef == before


def test_adaptive_kl_steers_toward_the_target():
    above, below = AdaptiveKL(0.1, 6.0, 1000), AdaptiveKL(0.1, 6.0, 1000)
    for _ in range(10):
        above.update(12.0, 100)
        below.update(1.0, 100)
    assert above.coef == pytest.approx(0.1 * 1.02**10)  # clipped +0.2 x 100/1000 each time
    assert below.coef == pytest.approx(0.1 * 0.98**10)


def test_adaptive_kl_resumes_exactly():
    observed = [3.0, 8.5, 6.2, 0.4, 7.7, 6.0]
    uninterrupted = AdaptiveKL(0.2, 6.0, 5000)
    for kl in observed:
        uninterrupted.update(kl, 64)
    first = AdaptiveKL(0.2, 6.0, 5000)
    for kl in observed[:3]:
        first.update(kl, 64)
    resumed = AdaptiveKL(0.2, 6.0, 5000)
    resumed.load_state_dict(first.state_dict())
    for kl in observed[3:]:
        resumed.update(kl, 64)
    assert resumed.coef == uninterrupted.coef
    with pytest.raises(RlhfkitError, match="lacks 'coef'"):
        resumed.load_state_dict({})


def test_adaptive_kl_errors_name_the_fix():
    with pytest.raises(ConfigError, match="init_coef=0 must be > 0"):
        AdaptiveKL(0, 6.0, 10_000)
    with pytest.raises(ConfigError, match="target=-1"):
        AdaptiveKL(0.1, -1, 10_000)
    with pytest.raises(ConfigError, match="horizon=0"):
        AdaptiveKL(0.1, 6.0, 0)
    controller = AdaptiveKL(0.1, 6.0, 100)
    with pytest.raises(ConfigError, match="horizon=100 is shorter than a batch of 256"):
        controller.update(6.0, 256)
    with pytest.raises(RlhfkitError, match="observed KL is nan"):
        controller.update(float("nan"), 64)
    assert controller.coef == 0.1
