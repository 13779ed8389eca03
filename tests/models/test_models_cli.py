"""python -m fastdw demo / info, run as a user would."""
import os
import shutil
import subprocess
import sys

import numpy as np
from skimage import data  # the demo needs scikit-image: fail here if it is missing
from torchvision.models import MobileNet_V3_Small_Weights

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def python_m_fastdw(args, torch_home, **environment):
    env = {**os.environ, "TORCH_HOME": str(torch_home), **environment}
    return subprocess.run([sys.executable, "-m", "fastdw", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def run(args, torch_home, **environment):
    done = python_m_fastdw(args, torch_home, **environment)
    assert done.returncode == 0, done.stderr
    return done.stdout


def top5_labels(out, label):
    lines = out.split(f"top-5 {label}:\n", 1)[1].splitlines()[:5]
    assert len(lines) == 5 and all("%  " in line for line in lines), out
    return [line.split("%  ", 1)[1] for line in lines]


def assert_real_predictions(out):
    assert "RANDOM" not in out
    for label in ("fastdw", "torchvision"):
        assert top5_labels(out, label)[0] == "Egyptian cat", out  # skimage.data.chelsea()
        assert set(top5_labels(out, label)[1:]) & CAT_CLASSES, out
    # Labels only: a printed percentage may round differently for ~1e-6 logit differences.
    assert top5_labels(out, "fastdw") == top5_labels(out, "torchvision")
    assert "max |logit difference|" in out and "fastdw backend:" in out
    assert "latency" in out


def test_demo_with_cached_imagenet_weights(checkpoint, tmp_path):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "hub" / "checkpoints")
    out = run(["demo", "--runs", "1", "--rounds", "1"], tmp_path)
    assert str(tmp_path / "hub" / "checkpoints") in out
    assert_real_predictions(out)


def test_demo_with_the_installed_weights_package(checkpoint, tmp_path):
    """README command 1: an empty hub cache, the weights package installed, no network."""
    out = run(["demo", "--runs", "1", "--rounds", "1"], tmp_path)
    assert f"from {checkpoint}" in out
    assert_real_predictions(out)
    assert not (tmp_path / "hub").exists()  # nothing downloaded or created


def test_demo_without_weights_says_random_and_how_to_get_them(tmp_path):
    # No package ships V3-Small's checkpoint, and the hub cache is empty.
    name = os.path.basename(MobileNet_V3_Small_Weights.IMAGENET1K_V1.url)
    out = run(["demo", "--model", "mobilenet_v3_small", "--runs", "1", "--rounds", "1"],
              tmp_path)
    assert "RANDOM weights" in out and name in out and "top-5 fastdw" in out


def test_demo_names_the_ops_the_kill_switch_disables(tmp_path):
    out = run(["demo", "--model", "mobilenet_v3_small", "--runs", "1", "--rounds", "1"],
              tmp_path, FASTDW_DISABLE_OPS="inverted_residual,dwconv_bn_act")
    assert "kill switch: dwconv_bn_act, inverted_residual" in out, out


def test_demo_refuses_an_unknown_model(tmp_path):
    done = python_m_fastdw(["demo", "--model", "resnet50"], tmp_path)
    assert done.returncode == 2 and "argument --model" in done.stderr, done.stderr


def test_demo_with_unreadable_image_is_an_argument_error(tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    for path in (tmp_path / "missing.jpg", not_an_image):
        done = python_m_fastdw(["demo", "--image", str(path)], tmp_path)
        assert done.returncode == 2, done.stderr  # argparse's exit status for a bad argument
        assert "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert "argument --image" in last and str(path) in last, done.stderr


def test_demo_with_a_damaged_checkpoint_says_which_file_and_what_to_do(tmp_path):
    # mobilenet_v3_small: no package ships a copy to fall back on.
    damaged = tmp_path / "hub" / "checkpoints" / os.path.basename(
        MobileNet_V3_Small_Weights.IMAGENET1K_V1.url)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"half a download")
    done = python_m_fastdw(["demo", "--model", "mobilenet_v3_small"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(damaged) in done.stderr and "delete it" in done.stderr, done.stderr


def test_info_lists_backends(tmp_path):
    out = run(["info"], tmp_path)
    assert "reference" in out and "torchvision" in out


def _read(path):
    from fastdw.__main__ import _image
    image, _ = _image(str(path))
    assert image.shape[0] == 3
    return image.permute(1, 2, 0).numpy()


def test_demo_reads_each_image_mode_as_the_picture_it_shows(tmp_path):
    # Pillow's own conversions define each mode's RGB; read as raw arrays, 1-bit came out as
    # bool (an all-white input), CMYK's channels passed for RGB (inverted colours) and grey +
    # alpha crashed the normalisation.
    from PIL import Image
    photo = Image.fromarray(data.chelsea())
    for mode, suffix in (("CMYK", "jpg"), ("1", "png"), ("LA", "png"), ("P", "png")):
        path = tmp_path / f"{mode}.{suffix}"
        photo.convert(mode).save(path)
        expected = np.asarray(photo.convert(mode).convert("RGB")).astype(np.float64)
        got = _read(path).astype(np.float64)
        # JPEG is lossy: within a few levels of the picture, far from its inversion.
        assert np.abs(got - expected).mean() < 4, mode
    deep = (data.camera().astype(np.uint16) * 257)  # 16-bit grey keeps its dtype and range
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got = _read(tmp_path / "deep.png")
    assert got.dtype == np.uint16 and np.array_equal(got[..., 1], deep)
