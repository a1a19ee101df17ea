"""The shared test helpers: parameter perturbation and the registry clean-up that tests/conftest.py checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from vtk_testing import foreign_registry_entries, perturb_, randomize_, registered

__all__: list = []


def _throwaway_model(pretrained=None, **kw):
    return nn.Linear(2, 2)


def test_perturb_is_seeded_and_moves_every_parameter() -> None:
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    before = [p.clone() for p in a.parameters()]
    perturb_(a, 0.1, seed=2)
    perturb_(b, 0.1, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(not torch.equal(p, q) for p, q in zip(a.parameters(), before))
    assert not a.training


def test_perturb_and_randomize_without_seed_draw_the_global_stream() -> None:
    torch.manual_seed(4)
    ref = torch.randn(3, 4)
    lin = nn.Linear(4, 3, bias=False)
    zero = torch.zeros(3, 4)
    with torch.no_grad():
        lin.weight.copy_(zero)
    torch.manual_seed(4)
    torch.testing.assert_close(perturb_(lin, 0.5, seed=None).weight, 0.5 * ref, rtol=0, atol=0)
    torch.manual_seed(4)
    torch.testing.assert_close(randomize_(lin, 1.0).weight, ref, rtol=0, atol=0)


def test_registered_entries_are_reported_until_unregistered_even_on_failure() -> None:
    assert foreign_registry_entries() == []
    with pytest.raises(RuntimeError, match="boom"):
        with registered(backbones.registry, _throwaway_model, aliases=("throwaway",)):
            assert backbones.registry.is_model("throwaway")
            assert foreign_registry_entries() == [f"backbones model '_throwaway_model' (from {__name__})"]
            raise RuntimeError("boom")
    assert not backbones.registry.is_model("_throwaway_model") and not backbones.registry.is_model("throwaway")
    assert foreign_registry_entries() == []
