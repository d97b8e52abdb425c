"""Scalar noise schedules: endpoints, monotonicity, derivatives against finite differences."""
import json

import pytest
import torch

from diffusionlm.schedules import Cosine, Linear, LogLinear, noise_schedule

SCHEDULES = [Linear(), Linear(0.01), LogLinear(), LogLinear(0.05), Cosine(), Cosine(0.02)]


@pytest.mark.parametrize("s", SCHEDULES, ids=repr)
def test_endpoints_and_monotone(s):
    l = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a = s.alpha(l)
    assert float(a[0]) == pytest.approx(1.0, abs=1e-15)
    assert float(a[-1]) == pytest.approx(s.eps, abs=1e-12)
    assert (a[1:] <= a[:-1] + 1e-15).all()


@pytest.mark.parametrize("s", SCHEDULES, ids=repr)
def test_derivatives_match_finite_differences(s):
    l = torch.linspace(0.01, 0.98, 97, dtype=torch.float64)
    h = 1e-6
    fd = (s.alpha(l + h) - s.alpha(l - h)) / (2 * h)
    assert torch.allclose(s.alpha_prime(l), fd, atol=1e-6)
    fd_sigma = (s.sigma_bar(l + h) - s.sigma_bar(l - h)) / (2 * h)
    assert torch.allclose(s.sigma_bar_prime(l), fd_sigma, rtol=1e-5, atol=1e-6)
    assert torch.allclose(torch.exp(-s.sigma_bar(l)), s.alpha(l), atol=1e-12)


def test_loglinear_is_seddd_total_noise():
    s = LogLinear(1e-3)
    l = torch.tensor([0.3], dtype=torch.float64)
    assert torch.allclose(s.sigma_bar(l), -torch.log(1 - (1 - 1e-3) * l))


@pytest.mark.parametrize("s", SCHEDULES, ids=repr)
def test_json_round_trip(s):
    assert noise_schedule(json.loads(json.dumps(s.to_dict()))) == s


def test_errors():
    with pytest.raises(ValueError, match="eps"):
        Linear(1.0)
    with pytest.raises(ValueError, match="eps"):
        Cosine(-0.1)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        noise_schedule("quadratic")
