"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use small tensors: one thread avoids oversubscription on shared 2-core machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def pretrained_gaussian():
    """The shared reference model of N(0, I) (see ``toolkit.train_gaussian_model``); do not train it."""
    from toolkit import train_gaussian_model

    return train_gaussian_model()
