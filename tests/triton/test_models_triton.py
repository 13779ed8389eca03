"""Whole MobileNets run through the triton backend (every fastdw op of the model: fused
depthwise/1x1 layers and inverted-residual blocks; the stem's dense 3x3 conv and the classifier
are stock PyTorch by design) match the reference backend in float64.

Under TRITON_INTERPRET=1 this is the end-to-end proof of the kernels without a GPU; inputs are
small because the interpreter is slow."""
import time

import pytest
import torch

from numerics import REL_TOL, rel_err

kernels = pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")
models = pytest.importorskip("fastdw.models", reason="needs fastdw.models")
from fastdw import backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE not in kernels.DEVICES:
    pytest.skip("the triton backend needs a CUDA device or TRITON_INTERPRET=1",
                allow_module_level=True)


def run(model, x, name):
    with torch.no_grad(), backend.use_backend(name):
        return model(x)


def compare(model, x):
    """(triton fp32 logits, float64 reference logits, relative error, seconds on triton)."""
    start = time.perf_counter()
    out = run(model.to(DEVICE), x.to(DEVICE), "triton").cpu()
    seconds = time.perf_counter() - start
    ref = run(model.cpu().double(), x.double(), "reference")
    return out, ref, rel_err(out, ref), seconds


@pytest.mark.parametrize("builder", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_v3_random_weights(builder, randomize_bn):
    model = randomize_bn(getattr(models, builder)()).eval()
    x = torch.randn(1, 3, 64, 64)
    out, ref, err, seconds = compare(model, x)
    print(f"{builder} 1x3x64x64 on triton: {seconds:.1f} s, rel err {err:.2e}")
    assert err < REL_TOL[torch.float32]


def test_mobilenet_v2_imagenet_checkpoint_on_a_photo(checkpoint):
    """torchvision's ImageNet mobilenet_v2 on scikit-image's photo of Chelsea the cat at
    128x128: same logits and the same top-5 classes as reference, and a cat on top."""
    skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image (the photo)")
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model.eval()
    photo = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    photo = torch.nn.functional.interpolate(photo, size=(128, 128), mode="bilinear",
                                            antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out, ref, err, seconds = compare(model, (photo - mean) / std)
    categories = models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = out[0].topk(5).indices.tolist()
    print(f"mobilenet_v2 1x3x128x128 on triton: {seconds:.1f} s, rel err {err:.2e}, top-5 "
          f"{[categories[i] for i in top5]}")
    assert err < REL_TOL[torch.float32]
    assert top5 == ref[0].topk(5).indices.tolist()
    assert "cat" in categories[top5[0]]
