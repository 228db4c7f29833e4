"""A MONAI bundle holding a multi-layer perceptron over named feature columns.

The voxel classifier and the detection ranker are both a MONAI
``FullyConnectedNet`` over a row of computed features. Each bundle lists, in
``configs/metadata.json``, the features it was trained on (in its own order)
and their mean and spread; the code may compute more. Loading checks that the
weights fit this code, so a model trained on features the code no longer
computes fails at start-up with a clear message instead of scoring garbage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sensecare.errors import ConfigurationError

__all__ = ["MlpBundle", "load_network"]


def load_network(bundle: Path, device, *, what: str,  # type: ignore[no-untyped-def]
                 overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """A bundle's ``network_def`` with its weights, on ``device`` in eval mode, and its metadata.

    Missing weights, or weights that do not fit the configured network (``overrides`` set
    keys of ``network_def`` first), are a :class:`ConfigurationError` naming the bundle,
    so a stale model fails at start-up instead of deep in torch.
    """
    import torch
    from monai.bundle import ConfigParser

    weights = bundle / "models" / "model.pt"
    if not weights.exists():
        raise ConfigurationError(f"{what} weights are missing: {weights} (train with {bundle}/scripts/train.py)")
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    for key, value in (overrides or {}).items():
        parser["network_def"][key] = value
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    model = parser.get_parsed_content("network_def")
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except RuntimeError as exc:  # shapes of another feature list or network
        raise ConfigurationError(f"{weights} does not fit {bundle}/configs; retrain it ({exc})".splitlines()[0]) from exc
    return model.to(device).eval(), metadata


class MlpBundle:
    """Weights, feature columns and normalisation of one bundle, on a torch device."""

    def __init__(self, bundle: Path, known_features: Sequence[str], device, *, what: str) -> None:  # type: ignore[no-untyped-def]
        metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
        #: The bundle's own settings (``metadata.json`` → ``sensecare``).
        self.settings: dict[str, Any] = metadata.get("sensecare", {})
        used = tuple(self.settings.get("features", ()))
        unknown = [name for name in used if name not in known_features]
        if not used or unknown:
            raise ConfigurationError(
                f"{bundle} was trained on features this code does not compute ({', '.join(unknown) or 'none listed'}); retrain it")
        #: The model sees a subset of the computed features, in its own order.
        self.columns = np.array([list(known_features).index(name) for name in used])
        self.name = str(metadata.get("name", bundle.name))
        self.version = str(metadata.get("version", "0"))
        self.mean = np.asarray(self.settings["feature_mean"], dtype=np.float32)
        self.std = np.asarray(self.settings["feature_std"], dtype=np.float32)
        self.device = device
        self.model, _ = load_network(bundle, device, what=what, overrides={"in_channels": len(used)})

    def predict(self, rows: np.ndarray, batch_rows: int = 1 << 18) -> np.ndarray:
        """Probability per row of all known features (the bundle picks its own columns)."""
        import torch

        out = np.empty(len(rows), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(rows), batch_rows):
                batch = (rows[start : start + batch_rows][:, self.columns] - self.mean) / self.std
                logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
                out[start : start + len(batch)] = torch.sigmoid(logits[:, 0]).float().cpu().numpy()
        return out
