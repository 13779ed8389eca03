"""torchvision's ImageNet mobilenet_v2 on the emulated cuda backend: fastdw's model with the real
checkpoint, channels_last, every inverted-residual block through the fused CUDA kernel
(csrc/cuda/inverted_residual.cuh) run by the emulator, gives torchvision's top-5 on
scikit-image's photo of Chelsea the cat. 48 x 48 pixels: the emulator is slow, and at this size
the top-5 still has a cat on top (at 32 x 32 it no longer does). The model runs in a child
process (tests/cuda/mobilenet_v2_emulated.py) because FASTDW_CUDA_EMULATE is read when fastdw is
imported."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from numerics import rel_err

SIZE = 48
HERE = os.path.dirname(os.path.abspath(__file__))


def photo(size):
    skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image (the photo)")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear",
                                            antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (image - mean) / std


def test_mobilenet_v2_checkpoint_top5_as_torchvision(emulator, checkpoint, float32_bound,
                                                     tmp_path):
    x = photo(SIZE)
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "mobilenet_v2_emulated.py"), str(checkpoint),
         str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        env={**os.environ, "FASTDW_CUDA_EMULATE": "1"}, capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = torch.load(tmp_path / "out.pt")
    launches = result["launches"]
    # Each of the 17 blocks launched the fused float32 kernel (a distinct launch: its seed).
    assert len(launches) == len(set(launches)) == 17, launches
    fused = "void fastdw_cuda::inverted_residual_nhwc<float, false>"
    assert all(launch.startswith(fused) for launch in launches), launches

    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    tv.eval()
    with torch.no_grad():
        stock32, ref64 = tv(x), tv.double()(x.double())
    logits = result["logits"]
    assert rel_err(logits, ref64) < float32_bound(stock32, ref64)
    top5 = logits[0].topk(5).indices.tolist()
    assert top5 == stock32[0].topk(5).indices.tolist()
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert "cat" in categories[top5[0]], [categories[i] for i in top5]
