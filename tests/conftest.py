"""Shared test settings."""

import os
import signal
from types import ModuleType

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


@pytest.fixture
def signal_at_step(monkeypatch):
    """``signal_at_step(module, step)``: the progress bar of ``module`` (its ``tqdm``) sends this process SIGINT
    as its loop reaches ``step``, as a stop request from outside would arrive mid-training."""

    def patch(module: ModuleType, step: int) -> None:
        class Signalling(module.tqdm):
            def __iter__(self):
                for item in super().__iter__():
                    if item == step:
                        os.kill(os.getpid(), signal.SIGINT)
                    yield item

        monkeypatch.setattr(module, "tqdm", Signalling)

    return patch
