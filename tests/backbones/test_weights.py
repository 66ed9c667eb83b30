"""torchvision weights names and enums, through torchvision's own download -> verify -> load path, offline.

The tests make each network's weights file themselves, serve it over HTTP on 127.0.0.1 under torch.hub's
naming convention (``<arch>-<first 8 hex digits of its SHA-256>.pth``, the hash computed here), and register it
as the ``IMAGENET1K_V1`` entry of a weights enum named like torchvision's (``ResNet50_Weights``). What runs is
torchvision's ``Weights.get_state_dict(check_hash=True)`` and torch.hub's cache, as on a student's machine.
"""
from __future__ import annotations

import hashlib
import importlib.util
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights, ResNet101_Weights, Weights, WeightsEnum

from course_lib.backbones import VGG16, load_torchvision_resnet, resnet_body
from course_lib.backbones import weights as weights_module
from course_lib.backbones.resnet import resnet101
from course_lib.backbones.weights import CorruptWeightsError, WeightsUnavailableError, cache_path, read_weights

REPO = Path(__file__).resolve().parents[2]
ENUM_NAMES = {"vgg16": "VGG16_Weights", "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}
TORCHVISION_BUILDERS = {"vgg16": torchvision.models.vgg16, "resnet50": torchvision.models.resnet50,
                        "resnet101": torchvision.models.resnet101}


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a fresh folder; ``.requests`` lists the paths asked for."""
    root = tmp_path_factory.mktemp("weights_server")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.root, httpd.url = root, f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def published(server):
    """For each network: torchvision's randomly initialised state dict, saved and served under torch.hub's name."""
    out = {}
    for arch, build in TORCHVISION_BUILDERS.items():
        torch.manual_seed(0)
        state = build().state_dict()
        tmp = server.root / f"{arch}.tmp"
        torch.save(state, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        name = f"{arch}-{digest[:8]}.pth"
        tmp.rename(server.root / name)
        out[arch] = (state, f"{server.url}/{name}")
    return out


def _enum(arch: str, url: str) -> type[WeightsEnum]:
    """A weights enum named like torchvision's, whose V1 entry (and DEFAULT alias) points at ``url``."""
    entry = Weights(url=url, transforms=None, meta={})
    return WeightsEnum(ENUM_NAMES[arch], [("IMAGENET1K_V1", entry), ("DEFAULT", entry)])


@pytest.fixture
def registry(monkeypatch, tmp_path, published):
    """torchvision's cache in a fresh TORCH_HOME, and the course's registry pointing at the served files."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enums = {arch: _enum(arch, url) for arch, (_, url) in published.items()}
    monkeypatch.setattr(weights_module, "get_model_weights", enums.__getitem__)
    return enums


def _assert_loaded(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keys):
    for k in keys:
        assert torch.equal(params[k], state[k]), k


@pytest.mark.parametrize("form", ["IMAGENET1K_V1", "DEFAULT", "enum", "ResNet50_Weights.IMAGENET1K_V1"])
def test_resnet50_loads_by_name_or_enum(registry, published, server, form):
    state, url = published["resnet50"]
    weights = registry["resnet50"].IMAGENET1K_V1 if form == "enum" else form
    body = resnet_body(50, weights=weights, returned_layers=[2, 3, 4])
    own = body.state_dict()
    assert len(own) > 100
    _assert_loaded(own, state, [k for k in own if not k.endswith("num_batches_tracked")])
    assert cache_path(registry["resnet50"].IMAGENET1K_V1).name == url.rsplit("/", 1)[1]
    assert cache_path(registry["resnet50"].IMAGENET1K_V1).is_file()


def test_resnet101_and_vgg16_load_by_name(registry, published):
    state, _ = published["resnet101"]
    model = load_torchvision_resnet(resnet101(), "IMAGENET1K_V1")
    _assert_loaded(model.state_dict(), state, state)

    vgg_state, _ = published["vgg16"]
    vgg = VGG16(num_classes=1000)
    vgg.load_torchvision_state_dict(registry["vgg16"].IMAGENET1K_V1)
    own = vgg.state_dict()
    _assert_loaded(own, vgg_state, [k for k in vgg_state if k.startswith("features.")])
    assert torch.equal(own["fc6.weight"], vgg_state["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(own["fc8.bias"], vgg_state["classifier.6.bias"])


def test_a_cached_file_is_used_without_the_network(registry, server):
    server.requests.clear()
    read_weights("IMAGENET1K_V1", "resnet50", progress=False)
    read_weights("IMAGENET1K_V1", "resnet50", progress=False)
    assert len(server.requests) == 1, server.requests  # downloaded once, then read from the cache


def test_a_corrupted_cached_file_is_refused(registry):
    read_weights("IMAGENET1K_V1", "resnet50", progress=False)
    path = cache_path(registry["resnet50"].IMAGENET1K_V1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: torch.load would read it without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError, match=rf"(?s){path.name}.*Delete it"):
        resnet_body(50, weights="IMAGENET1K_V1")
    path.write_bytes(b"")  # a download killed at its first byte
    with pytest.raises(CorruptWeightsError, match="Delete it"):
        read_weights(registry["resnet50"].DEFAULT, "resnet50")


def test_torchvisions_own_file_name_is_verified_too(monkeypatch, tmp_path):
    """With torchvision's real registry: a file under the real name, not the real bytes, is refused (offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = cache_path(ResNet50_Weights.IMAGENET1K_V1)
    assert path.name == "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(CorruptWeightsError, match="resnet50-0676ba61.pth"):
        resnet_body(50, weights=ResNet50_Weights.IMAGENET1K_V1)


def test_offline_miss_names_the_file_the_url_and_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    closed = f"http://127.0.0.1:{_closed_port()}/resnet50-0676ba61.pth"
    monkeypatch.setattr(weights_module, "get_model_weights", {"resnet50": _enum("resnet50", closed)}.__getitem__)
    with pytest.raises(WeightsUnavailableError) as info:
        resnet_body(50, weights="IMAGENET1K_V1")
    message = str(info.value)
    for part in ("resnet50-0676ba61.pth", closed, str(tmp_path / "torch" / "hub" / "checkpoints"), "make weights"):
        assert part in message, (part, message)
    assert not any((tmp_path / "torch" / "hub" / "checkpoints").iterdir())  # nothing half-written


def test_a_download_that_is_not_the_published_file_is_refused_and_not_kept(registry, server, monkeypatch):
    wrong = server.root / "resnet50-00000000.pth"
    wrong.write_bytes((server.root / published_name(server, "resnet50")).read_bytes())
    monkeypatch.setattr(weights_module, "get_model_weights",
                        {"resnet50": _enum("resnet50", f"{server.url}/{wrong.name}")}.__getitem__)
    with pytest.raises(CorruptWeightsError, match="not the published file"):
        resnet_body(50, weights="IMAGENET1K_V1")
    assert not cache_path(weights_module.get_model_weights("resnet50").IMAGENET1K_V1).exists()


def published_name(server, arch: str) -> str:
    return next(p.name for p in server.root.glob(f"{arch}-*.pth") if not p.name.endswith("-00000000.pth"))


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connecting is refused


@pytest.mark.parametrize("weights, match", [
    (ResNet101_Weights.IMAGENET1K_V1, "weights of another network.*ResNet50_Weights"),
    ("IMAGENET1K_V9", "neither a file nor a name of ResNet50_Weights.*'IMAGENET1K_V1'"),
    (3, "must be a file path, a torchvision weights name"),
])
def test_wrong_weights_are_named_before_anything_is_read(weights, match, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises((ValueError, TypeError), match=match):
        resnet_body(50, weights=weights)
    assert not (tmp_path / "torch").exists()


def test_imagenet_weights_need_the_papers_width(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ValueError, match="width=0.25.*width=1.0"):
        resnet_body(50, weights="IMAGENET1K_V1", width=0.25)
    with pytest.raises(ValueError, match="width=0.5.*width=1.0"):
        VGG16(width=0.5).load_torchvision_state_dict("IMAGENET1K_V1")


def _script():
    spec = importlib.util.spec_from_file_location("download_weights", REPO / "data_scripts" / "download_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_weights_fetches_verifies_and_then_loads_offline(registry, server, capsys, monkeypatch):
    script = _script()
    assert script.main(["--quiet", "--arch", "vgg16", "--arch", "resnet50", "--arch", "resnet101"]) == 0
    out = capsys.readouterr().out
    assert "3 weights file(s)" in out and out.count("downloaded and verified") == 3
    assert script.main(["--quiet", "--arch", "resnet50"]) == 0
    assert "already there, SHA-256 prefix verified" in capsys.readouterr().out
    # offline afterwards: every load is served from the cache
    server.requests.clear()
    resnet_body(101, weights="IMAGENET1K_V1")
    assert server.requests == []
    # a damaged file is reported with what to do, and the script says it failed
    path = cache_path(registry["vgg16"].IMAGENET1K_V1)
    path.write_bytes(path.read_bytes()[:1000])
    assert script.main(["--quiet", "--arch", "vgg16"]) == 1
    assert "Delete it" in capsys.readouterr().err


@pytest.mark.parametrize("builder", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_c4"])
def test_detectors_take_weights_backbone_by_name(registry, published, builder):
    import course_lib.detection as detection
    state, _ = published["resnet50"]
    model = getattr(detection, builder)(num_classes=3, weights_backbone="IMAGENET1K_V1")
    conv1 = next(v for k, v in model.state_dict().items() if k.endswith("conv1.weight"))
    assert torch.equal(conv1, state["conv1.weight"])


def test_rcnn_takes_its_vgg16s_weights_backbone_by_name(registry, published):
    """Chapter 4's R-CNN starts from the gpu profile's rcnn.weights_backbone (its Fast R-CNN copies that VGG16)."""
    from course_lib.detection import rcnn_vgg16

    state, _ = published["vgg16"]
    model = rcnn_vgg16(3, weights_backbone="IMAGENET1K_V1")
    vgg = model.features.vgg.state_dict()
    assert torch.equal(vgg["features.0.weight"], state["features.0.weight"])
    assert torch.equal(vgg["fc6.weight"].flatten(1), state["classifier.0.weight"])  # fc6 as a 7 x 7 convolution
