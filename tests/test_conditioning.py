"""The one conditioning module every denoiser uses: targets, the null token, tying targets to it."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from test_multipart import MASK, MOLECULES
from torch import nn

from rgdm.diffusion.conditioning import Conditioning, conditioning_of, is_null, null_condition
from rgdm.domains.molecules.graph_network import BondGraphDenoiser
from rgdm.domains.molecules.network import EGNNDenoiser
from rgdm.domains.shapes.network import PointDenoiser
from rgdm.domains.toy.network import MLPDenoiser

TARGETS = 3


def randomised(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in net.parameters():  # zero-initialised output layers would hide every difference
        nn.init.normal_(p, std=0.2)
    return net.eval()


CASES = {
    "toy": (lambda: MLPDenoiser(2, TARGETS, width=16, depth=1), lambda: (torch.randn(4, 2), None)),
    "shapes": (lambda: PointDenoiser(TARGETS, width=16, depth=1, neighbours=4, edge_width=8),
               lambda: (torch.randn(4, 32, 3), None)),
    "molecules (point cloud)": (lambda: EGNNDenoiser(6, TARGETS, hidden=16, layers=1),
                                lambda: (torch.randn(4, 5, 9), torch.ones(4, 5))),
    "molecules (bonds)": (lambda: BondGraphDenoiser(8, 4, TARGETS, hidden=16, edge_hidden=8, layers=1),
                          lambda: (MOLECULES.repeat(2)[:4], MASK.repeat(2, 1)[:4])),
}


def outputs(net: nn.Module, x, mask, cond) -> torch.Tensor:
    with torch.no_grad():
        out = net(x, torch.full((4,), 0.5), cond, mask)
    if isinstance(out, TensorDict):
        return torch.cat([v.flatten(1) for v in out.values()], 1)
    return out.flatten(1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_denoiser_conditions_through_one_module_with_a_null_token(name):
    build, inputs = CASES[name]
    net, (x, mask) = randomised(build()), inputs()
    conditioning = conditioning_of(net)
    assert isinstance(conditioning, Conditioning) and conditioning.null_token == TARGETS
    targets = torch.tensor([0, 1, 2, 0])
    unconditional = outputs(net, x, mask, None)
    torch.testing.assert_close(unconditional, outputs(net, x, mask, torch.full((4,), TARGETS)))
    assert not torch.allclose(outputs(net, x, mask, targets), unconditional), "a target changes the output"
    conditioning.tie_to_null()
    torch.testing.assert_close(outputs(net, x, mask, targets), unconditional)


def test_a_network_has_at_most_one_conditioning_module():
    assert conditioning_of(nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match="has 2 conditioning modules"):
        conditioning_of(nn.Sequential(Conditioning(2, 4), Conditioning(2, 4)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_module_takes_a_value_as_well_as_a_class(name):
    build, inputs = CASES[name]
    net, (x, mask) = randomised(build()), inputs()
    conditioning = conditioning_of(net)
    values = torch.tensor([70.0, 75.0, 80.0, float("nan")])
    with pytest.raises(ValueError, match="takes class targets"):
        outputs(net, x, mask, values)
    conditioning.enable_values(75.0, 8.0)
    unconditional = outputs(net, x, mask, None)
    torch.testing.assert_close(outputs(net, x, mask, values), unconditional,
                               msg="an untrained value path answers every value as the null token")
    nn.init.normal_(conditioning.value.weight, std=0.5)  # as training would move it
    conditioned = outputs(net, x, mask, values)
    torch.testing.assert_close(conditioned[3], unconditional[3], msg="NaN is no target")
    assert not torch.allclose(conditioned[:3], unconditional[:3]), "a value changes the output"
    shifted = outputs(net, x, mask, values + 1.0)
    assert not torch.allclose(shifted[:3], conditioned[:3]), "a changed value changes the output"
    torch.testing.assert_close(outputs(net, x, mask, torch.full((4,), TARGETS)), unconditional,
                               msg="classes still work beside values")
    conditioning.tie_to_null()
    torch.testing.assert_close(outputs(net, x, mask, values), unconditional)


def test_the_null_condition_has_the_kind_of_the_condition():
    classes, values = torch.tensor([0, 2]), torch.tensor([70.0, 80.0])
    assert null_condition(classes, 3).tolist() == [3, 3] and is_null(torch.tensor([3, 1]), 3).tolist() == [True, False]
    assert torch.isnan(null_condition(values, 3)).all()
    assert is_null(torch.tensor([float("nan"), 3.0]), 3).tolist() == [True, False], "3.0 is a value, not the token"
    with pytest.raises(ValueError, match="standard deviation must be positive"):
        Conditioning(2, 4).enable_values(0.0, 0.0)


def test_an_unconditional_model_retargeted_to_a_property_answers_every_value_as_no_target():
    """Classifier guidance and plain baselines sample the unconditional base at property values: its new value
    path starts at zero, so the network's output is the base's, whatever the value."""
    from rgdm.engine.builder import load_trained, retarget

    base = load_trained("qm9-noh-pretrained")
    alpha = retarget(base, {"target_property": "alpha"})
    assert alpha.domain.target_kind == "value" and alpha.meta["domain"]["target_property"] == "alpha"
    prior = alpha.domain.prior_batch(3, torch.Generator().manual_seed(0), torch.tensor([60.0, 75.0, 90.0]))
    noisy = alpha.domain.encoding.zeros(3, prior.mask.shape[1]).apply(lambda part: torch.randn_like(part))
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        plain = base.net(noisy, t, None, prior.mask)
        for values in (prior.cond, prior.cond + 10):
            targeted = alpha.net(noisy, t, values, prior.mask)
            torch.testing.assert_close(targeted.to_dict(), plain.to_dict(), rtol=0, atol=0)
