"""Offline hubs: fail fast without weights, load cached ones, the reachability probe."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from nctune.backbones import create_backbone, hub
from nctune.errors import BackboneError
from tests.backbones.helpers import images


# ======================================================================= offline hubs
@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the HF and torch caches at empty folders (huggingface_hub reads its at import)."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_offline_pretrained_fails_fast(
    spec: str, empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("NCTUNE_OFFLINE", "1")  # never reach a real hub from a test
    before = hfc.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(BackboneError) as err:
        create_backbone(spec)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert spec in msg and "backbone.weights" in msg and "\n" not in msg
    # nothing was probed: the message says downloads are off, not that a host is unreachable
    assert "NCTUNE_OFFLINE" in msg and "unreachable" not in msg
    assert hfc.HF_HUB_OFFLINE is before, "the offline switch must be restored"


def test_offline_probe_decides(empty_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NCTUNE_OFFLINE the connectivity probe decides; a False answer fails at once."""
    import huggingface_hub.constants as hfc

    monkeypatch.delenv("NCTUNE_OFFLINE", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    probed: list[str] = []
    monkeypatch.setattr(hub, "reachable", lambda url, timeout=1.0: probed.append(url) or False)
    with pytest.raises(BackboneError, match="huggingface.co unreachable"):
        create_backbone("timm:resnet18")
    with pytest.raises(BackboneError, match="download.pytorch.org unreachable"):
        create_backbone("torchvision:resnet18")
    assert "huggingface.co" in probed[0] and "download.pytorch.org" in probed[1]
    assert hfc.HF_HUB_OFFLINE is False


def test_cached_hub_weights_load_offline(
    empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy in the HF cache (or torch hub cache) loads without any network."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("NCTUNE_OFFLINE", "1")
    src = timm.create_model("resnet18").eval()
    repo = Path(hfc.HF_HUB_CACHE) / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    b = create_backbone("timm:resnet18")
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(b.model(x), src(x))

    tv_src = torchvision.models.resnet18().eval()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    ckpt.parent.mkdir(parents=True)
    torch.save(tv_src.state_dict(), ckpt)
    tv = create_backbone("torchvision:resnet18")
    assert tv.input_config.image_size == 224 and tv.input_config.crop_pct == pytest.approx(
        224 / 256
    )
    with torch.no_grad():
        torch.testing.assert_close(tv.model(x), tv_src(x))


def test_reachable_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NCTUNE_OFFLINE", raising=False)
    monkeypatch.delenv("NCTUNE_ONLINE", raising=False)
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert hub.reachable(f"http://127.0.0.1:{port}/x")
        monkeypatch.setenv("NCTUNE_OFFLINE", "1")
        assert not hub.reachable(f"http://127.0.0.1:{port}/x")
    monkeypatch.delenv("NCTUNE_OFFLINE")
    start = time.perf_counter()
    assert not hub.reachable(f"http://127.0.0.1:{port}/x", timeout=0.5)  # closed now
    assert time.perf_counter() - start < 2
    monkeypatch.setenv("NCTUNE_ONLINE", "1")  # the user vouches for the network
    assert hub.reachable(f"http://127.0.0.1:{port}/x", timeout=0.5)
