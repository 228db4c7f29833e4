"""Choosing where tensors run: ``--device auto|cpu|cuda``.

One place resolves the user's choice so that no code path hard-wires CUDA and a
request for a GPU that is not there fails with a clear message, not deep in torch.
"""

from __future__ import annotations

import enum

from sensecare.errors import ConfigurationError


class DeviceChoice(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def resolve_device(choice: DeviceChoice | str = DeviceChoice.AUTO):  # type: ignore[no-untyped-def]
    """The torch device for ``choice``; ``auto`` takes CUDA when torch sees a GPU."""
    import torch

    try:
        choice = DeviceChoice(choice)
    except ValueError:
        raise ConfigurationError(f"unknown device {choice!r}; choose auto, cpu or cuda") from None
    if choice is DeviceChoice.CPU:
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice is DeviceChoice.CUDA and not available:
        raise ConfigurationError("--device cuda was asked for, but torch sees no CUDA GPU (CPU build or no driver)")
    return torch.device("cuda" if available else "cpu")
