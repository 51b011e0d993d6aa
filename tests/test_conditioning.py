"""The one conditioning module every denoiser uses: targets, the null token, tying targets to it."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from test_multipart import MASK, MOLECULES
from torch import nn

from rgdm.diffusion.conditioning import Conditioning, conditioning_of
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
