"""python -m fastdw demo / info, run as a user would."""
import os
import shutil
import subprocess
import sys

from skimage import data  # noqa: F401  (the demo needs scikit-image; fail here if missing)

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def python_m_fastdw(args, torch_home):
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    return subprocess.run([sys.executable, "-m", "fastdw", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def run(args, torch_home):
    done = python_m_fastdw(args, torch_home)
    assert done.returncode == 0, done.stderr
    return done.stdout


def top5_labels(out, label):
    lines = out.split(f"top-5 {label}:\n", 1)[1].splitlines()[:5]
    assert len(lines) == 5 and all("%  " in line for line in lines), out
    return [line.split("%  ", 1)[1] for line in lines]


def test_demo_with_cached_imagenet_weights(checkpoint, tmp_path):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "hub" / "checkpoints")
    out = run(["demo", "--runs", "1", "--rounds", "1"], tmp_path)
    assert "RANDOM" not in out
    for label in ("fastdw", "torchvision"):
        assert set(top5_labels(out, label)) & CAT_CLASSES, out
    # Labels only: a printed percentage may round differently for ~1e-6 logit differences.
    assert top5_labels(out, "fastdw") == top5_labels(out, "torchvision")
    assert "max |logit difference|" in out and "fastdw backend:" in out
    assert "latency" in out


def test_demo_without_weights_says_random(tmp_path):
    out = run(["demo", "--runs", "1", "--rounds", "1"], tmp_path)
    assert "RANDOM weights" in out and "mobilenet_v2-b0353104.pth" in out


def test_demo_with_unreadable_image_is_an_argument_error(tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    for path in (tmp_path / "missing.jpg", not_an_image):
        done = python_m_fastdw(["demo", "--image", str(path)], tmp_path)
        assert done.returncode == 2, done.stderr  # argparse's exit status for a bad argument
        assert "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert "argument --image" in last and str(path) in last, done.stderr


def test_info_lists_backends(tmp_path):
    out = run(["info"], tmp_path)
    assert "reference" in out and "torchvision" in out
