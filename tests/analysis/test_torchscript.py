"""The bundles' TorchScript copies: current, the same networks, and loaded without MONAI."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sensecare.analysis.bundle import (
    TORCHSCRIPT,
    build_network,
    load_network,
    network_overrides,
    source_digest,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLES = sorted(p for p in MODELS.iterdir() if (p / "models" / "model.pt").exists())
#: An input each network accepts: (channels or features, spatial size).
_INPUTS = {"lesion_heatmap": None, "lesion_ranker": None, "lesion_verifier": (4, 24), "lesion_segresnet": (1, 32),
           "lesion_cnn": (2, 32)}


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_each_shipped_torchscript_is_exported_from_the_shipped_weights_and_computes_the_same(bundle: Path) -> None:
    overrides = network_overrides(bundle)
    extra = {"sensecare_source_sha256": ""}
    scripted = torch.jit.load(bundle / "models" / TORCHSCRIPT, map_location="cpu", _extra_files=extra)
    stamp = extra["sensecare_source_sha256"]
    assert bytes(stamp).decode() == source_digest(bundle, overrides), "run scripts/export_models.py"
    shape = _INPUTS[bundle.name]
    x = (torch.randn(3, overrides["in_channels"]) if shape is None  # type: ignore[index]
         else torch.randn(1, shape[0], shape[1], shape[1], shape[1]))
    with torch.inference_mode():
        assert torch.allclose(scripted.eval()(x), build_network(bundle, overrides, what=bundle.name)(x), atol=1e-5)


def test_a_stale_torchscript_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = tmp_path / "lesion_verifier"
    shutil.copytree(MODELS / "lesion_verifier", bundle)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0  # other weights, same shapes
    torch.save(state, bundle / "models" / "model.pt")
    with caplog.at_level(logging.WARNING):
        model, _ = load_network(bundle, "cpu", what="verifier")
    assert "not exported from the current weights" in caplog.text
    assert not isinstance(model, torch.jit.ScriptModule)
    assert torch.equal(model.state_dict()[first], state[first])


def test_the_analysis_loads_its_networks_without_importing_monai() -> None:
    code = (
        "import sys\n"
        "from sensecare.analysis import pipeline\n"
        "for load in (pipeline._heatmap_model, pipeline._ranker_model, pipeline._verifier_model, pipeline._lesion_network):\n"
        "    load('cpu')\n"
        "assert 'monai' not in sys.modules, 'monai was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
