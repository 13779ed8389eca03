"""weights=: torchvision's ImageNet checkpoint through the torch hub cache, offline."""
import shutil

import pytest
import torch
import torchvision
from skimage import data

import fastdw.backend
import fastdw.models as fm
import fastdw.models.weights
import fastdw.nn
from fastdw.models import MobileNet_V2_Weights, MobileNet_V3_Large_Weights
from fastdw.models.weights import WeightsUnavailableError, resolve

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


@pytest.fixture
def cached_checkpoint(checkpoint, hub_dir):
    (hub_dir / "checkpoints").mkdir(parents=True)
    return shutil.copy(checkpoint, hub_dir / "checkpoints")


def top5(model, image):
    x = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(
        torch.from_numpy(image).permute(2, 0, 1)).unsqueeze(0)
    with torch.no_grad():
        logits = model(x)
    return logits, logits[0].topk(5).indices.tolist()


def test_imagenet_checkpoint_offline_matches_torchvision(cached_checkpoint):
    ours = fm.mobilenet_v2(weights="IMAGENET1K_V1").eval()
    # torchvision finds the same cached file (downloads are disabled by the hub_dir fixture).
    tv = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
    categories = fm.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    for image, expected in ((data.chelsea(), CAT_CLASSES), (data.coffee(), {"espresso"})):
        ours_logits, ours_top5 = top5(ours, image)
        tv_logits, tv_top5 = top5(tv, image)
        # Exact order: the closest neighbours in these top-5s are 0.04 logits apart (coffee's
        # "cup" / "soup bowl"), thousands of times the fastdw-torchvision difference.
        assert ours_top5 == tv_top5
        # 224x224 through 52 folded layers in float32: ~1e-6 relative, see the random-weight tests.
        torch.testing.assert_close(ours_logits, tv_logits, rtol=0, atol=1e-4)
        assert categories[ours_top5[0]] in expected, [categories[i] for i in ours_top5]
        if "cpp" in fastdw.backend.usable("cpu"):  # the frozen form of the same model
            frozen_logits, frozen_top5 = top5(fastdw.nn.freeze(ours), image)
            assert frozen_top5 == tv_top5
            torch.testing.assert_close(frozen_logits, tv_logits, rtol=0, atol=1e-4)


def test_weights_by_enum_qualified_name_and_path(cached_checkpoint):
    reference = fm.mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).state_dict()
    for weights in ("MobileNet_V2_Weights.IMAGENET1K_V1", str(cached_checkpoint)):
        loaded = fm.mobilenet_v2(weights=weights).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in reference.items()), weights
    assert resolve("DEFAULT", MobileNet_V2_Weights) is MobileNet_V2_Weights.IMAGENET1K_V2
    assert resolve("IMAGENET1K_V2", MobileNet_V2_Weights) is MobileNet_V2_Weights.IMAGENET1K_V2


def test_missing_checkpoint_is_downloaded_once_into_the_hub_cache(checkpoint, hub_dir,
                                                                    no_weights_package,
                                                                    monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        shutil.copy(checkpoint, dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    fm.mobilenet_v2(weights="IMAGENET1K_V1", progress=False)
    fm.mobilenet_v2(weights="IMAGENET1K_V1", progress=False)  # now cached: no second download
    assert calls == [(MobileNet_V2_Weights.IMAGENET1K_V1.url, "b0353104")]
    assert (hub_dir / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file()


@pytest.mark.parametrize("builder, filename", [
    (fm.mobilenet_v2, "mobilenet_v2-b0353104.pth"),
    (fm.mobilenet_v3_large, "mobilenet_v3_large-8738ca79.pth"),
])
def test_offline_and_missing_names_file_and_directory(builder, filename, hub_dir,
                                                      no_weights_package):
    with pytest.raises(WeightsUnavailableError) as err:
        builder(weights="IMAGENET1K_V1")
    assert filename in str(err.value)
    assert str(hub_dir / "checkpoints") in str(err.value)


def test_unusable_torch_home_names_the_directory(hub_dir, no_weights_package, monkeypatch):
    # TORCH_HOME under a regular file: makedirs fails even for root (chmod would not).
    blocker = hub_dir.parent / "not_a_directory"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker))
    with pytest.raises(WeightsUnavailableError) as err:
        fm.mobilenet_v2(weights="IMAGENET1K_V1")
    assert str(blocker / "hub" / "checkpoints") in str(err.value)
    assert "TORCH_HOME" in str(err.value)


def test_failed_download_leaves_no_new_directories(hub_dir, no_weights_package):
    with pytest.raises(WeightsUnavailableError):
        fm.mobilenet_v2(weights="IMAGENET1K_V1")
    assert not hub_dir.exists()
    hub_dir.mkdir()  # a directory that was there before stays
    with pytest.raises(WeightsUnavailableError):
        fm.mobilenet_v2(weights="IMAGENET1K_V1")
    assert hub_dir.is_dir() and not any(hub_dir.iterdir())


def test_the_weights_package_serves_a_missing_checkpoint(checkpoint, hub_dir):
    """Offline, with an empty hub cache: the copy the installed package ships is loaded (and
    nothing is downloaded or created)."""
    loaded = fm.mobilenet_v2(weights="IMAGENET1K_V1").state_dict()
    shipped = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert loaded.keys() == shipped.keys()
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)
    assert not hub_dir.exists()


def test_a_package_copy_that_fails_its_hash_is_not_used(hub_dir, tmp_path, monkeypatch):
    name = "mobilenet_v2-b0353104.pth"
    forged = tmp_path / name
    forged.write_bytes(b"not the checkpoint")

    class Package:  # what importlib.metadata.distribution returns, as far as fastdw reads it
        files = [type("File", (), {"name": name, "locate": lambda self: forged})()]
    monkeypatch.setattr(fastdw.models.weights, "OFFLINE_PACKAGES", {name: "forged-weights"})
    monkeypatch.setattr(fastdw.models.weights.importlib.metadata, "distribution",
                        lambda dist: Package if dist == "forged-weights" else None)
    with pytest.warns(UserWarning, match="not using it"):
        with pytest.raises(WeightsUnavailableError, match=name):  # then the download fails
            fm.mobilenet_v2(weights="IMAGENET1K_V1")


def test_a_damaged_hub_cache_file_gives_way_to_the_package_copy(checkpoint, hub_dir):
    """An interrupted download left a truncated file in the hub cache: its hash does not match
    its name, so the installed package's copy is loaded instead, with a warning."""
    damaged = hub_dir / "checkpoints" / "mobilenet_v2-b0353104.pth"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(open(checkpoint, "rb").read()[:100_000])
    with pytest.warns(UserWarning, match="does not match the SHA-256"):
        loaded = fm.mobilenet_v2(weights="IMAGENET1K_V1").state_dict()
    shipped = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)


@pytest.mark.parametrize("where", ["hub cache", "weights= path"])
def test_empty_checkpoint_names_the_file(where, hub_dir, no_weights_package):
    empty = hub_dir / "checkpoints" / "mobilenet_v2-b0353104.pth"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    with pytest.raises(WeightsUnavailableError, match="empty or truncated") as err:
        fm.mobilenet_v2(weights="IMAGENET1K_V1" if where == "hub cache" else str(empty))
    assert str(empty) in str(err.value)


def test_num_classes_must_match_weights(hub_dir):
    with pytest.raises(ValueError, match="num_classes=10"):
        fm.mobilenet_v2(weights="IMAGENET1K_V1", num_classes=10)


@pytest.mark.parametrize("weights, error, match", [
    ("IMAGENET1K_V9", ValueError, "IMAGENET1K_V1"),
    ("MobileNet_V3_Small_Weights.IMAGENET1K_V1", ValueError, "unknown weights"),
    (MobileNet_V3_Large_Weights.IMAGENET1K_V1, ValueError, "another model"),
    (1, TypeError, "weights must be"),
])
def test_bad_weights_argument(weights, error, match, hub_dir):
    with pytest.raises(error, match=match):
        fm.mobilenet_v2(weights=weights)


def test_missing_local_file(tmp_path):
    from pathlib import Path
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fm.mobilenet_v2(weights=Path(tmp_path / "nope.pth"))
