"""A MONAI bundle holding a multi-layer perceptron over named feature columns.

The voxel classifier and the detection ranker are both a MONAI
``FullyConnectedNet`` over a row of computed features. Each bundle lists, in
``configs/metadata.json``, the features it was trained on (in its own order)
and their mean and spread; the code may compute more. Loading checks that the
weights fit this code, so a model trained on features the code no longer
computes fails at start-up with a clear message instead of scoring garbage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sensecare.errors import ConfigurationError

__all__ = ["TORCHSCRIPT", "MlpBundle", "build_network", "export_torchscript", "load_network", "network_overrides",
           "source_digest"]

logger = logging.getLogger(__name__)


#: The TorchScript copy of a bundle's network, which the analysis loads without importing MONAI.
TORCHSCRIPT = "model.ts"
_SOURCE_KEY = "sensecare_source_sha256"


def load_network(bundle: Path, device, *, what: str,  # type: ignore[no-untyped-def]
                 overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """A bundle's network with its weights, on ``device`` in eval mode, and its metadata.

    The network is read from ``models/model.ts`` (TorchScript, see :func:`export_torchscript`)
    when that file was exported from the current weights and configuration: importing MONAI
    costs about two seconds of every analysis process, the network itself milliseconds.
    Otherwise it is built from ``configs/inference.json`` (``overrides`` set keys of
    ``network_def`` first) and the weights. Missing weights, or weights that do not fit the
    configured network, are a :class:`ConfigurationError` naming the bundle, so a stale model
    fails at start-up instead of deep in torch.
    """
    import torch

    _weights(bundle, what)  # the TorchScript stamp is a digest of them: fail clearly first
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    scripted = bundle / "models" / TORCHSCRIPT
    if scripted.exists():
        extra = {_SOURCE_KEY: ""}
        model = torch.jit.load(scripted, map_location=device, _extra_files=extra)
        stamp = extra[_SOURCE_KEY]
        if (stamp.decode() if isinstance(stamp, bytes) else stamp) == source_digest(bundle, overrides):
            return model.eval(), metadata
        logger.warning("%s is not exported from the current weights and configs; building the network with MONAI "
                       "(run scripts/export_models.py)", scripted)
    return build_network(bundle, overrides, what=what).to(device).eval(), metadata


def build_network(bundle: Path, overrides: dict[str, Any] | None = None, *, what: str):  # type: ignore[no-untyped-def]
    """The bundle's MONAI ``network_def`` with its weights (on the CPU, eval mode)."""
    import torch
    from monai.bundle import ConfigParser

    weights = _weights(bundle, what)
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    for key, value in (overrides or {}).items():
        parser["network_def"][key] = value
    model = parser.get_parsed_content("network_def")
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except RuntimeError as exc:  # shapes of another feature list or network
        raise ConfigurationError(f"{weights} does not fit {bundle}/configs; retrain it ({exc})".splitlines()[0]) from exc
    return model.eval()


def _weights(bundle: Path, what: str) -> Path:
    """The bundle's trained weights; their absence is a configuration error naming the script that makes them."""
    weights = bundle / "models" / "model.pt"
    if not weights.exists():
        raise ConfigurationError(f"{what} weights are missing: {weights} (train with {bundle}/scripts/train.py)")
    return weights


def source_digest(bundle: Path, overrides: dict[str, Any] | None = None) -> str:
    """SHA-256 of what the network is made from: weights, inference config and overrides."""
    digest = hashlib.sha256()
    digest.update((bundle / "models" / "model.pt").read_bytes())
    digest.update((bundle / "configs" / "inference.json").read_bytes())
    digest.update(json.dumps(overrides or {}, sort_keys=True).encode())
    return digest.hexdigest()


def export_torchscript(bundle: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write ``models/model.ts``: the bundle's network scripted, stamped with its :func:`source_digest`."""
    import torch

    model = build_network(bundle, overrides, what=bundle.name)
    out = bundle / "models" / TORCHSCRIPT
    torch.jit.save(torch.jit.script(model), out, _extra_files={_SOURCE_KEY: source_digest(bundle, overrides)})
    return out


def network_overrides(bundle: Path) -> dict[str, Any] | None:
    """The ``network_def`` keys the analysis sets for ``bundle``: an MLP's input width is its feature count."""
    return _overrides_of(json.loads((bundle / "configs" / "metadata.json").read_text()).get("sensecare", {}))


def _overrides_of(settings: dict[str, Any]) -> dict[str, Any] | None:
    features = settings.get("features")
    return {"in_channels": len(features)} if features else None


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
        self.model, _ = load_network(bundle, device, what=what, overrides=_overrides_of(self.settings))

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
