"""python -m fastdw {demo,info,bench}: classify a photo with fastdw and torchvision, list
backends, or benchmark this machine into a dated report folder."""
import argparse
import os
import statistics
import sys
import time


def _image(path):
    import numpy as np
    import torch
    if path is None:
        from skimage import data
        array, name = data.chelsea(), "skimage.data.chelsea()"
    else:
        from PIL import Image
        from skimage import io
        with Image.open(path) as image:
            # 16-bit and float grey: imageio keeps the dtype, whose range the weights'
            # transforms scale by. Every other mode (1-bit, palette, grey + alpha, CMYK, ...)
            # becomes RGB as Pillow defines it; read as an array, 1-bit is bool and CMYK's
            # channels would pass for RGB.
            deep = image.mode in ("I", "I;16", "I;16B", "I;16L", "F")
            array = io.imread(path) if deep else np.asarray(image.convert("RGB"))
        name = path
    if array.ndim == 2:  # grey scale -> 3 identical channels
        array = np.stack([array] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1), name


def _image_arg(path):
    """--image: read while parsing, so that a bad file is reported as a bad argument."""
    try:
        return _image(path)
    except Exception as err:  # missing: OSError; not an image: OSError, struct.error, ...
        # One line, like every argparse error; imageio's messages go on with plugin hints.
        reason = str(err).partition("\n")[0]
        raise argparse.ArgumentTypeError(
            f"cannot read {path!r} as an image ({type(err).__name__}: {reason}); "
            f"give a readable image file such as a JPEG or PNG") from err


def _median_ms(fn, x, runs):
    fn(x)  # warm-up: first-call allocations and fold caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# --model choices: the fastdw models that torchvision has ImageNet weights for, with those weights.
DEMO_MODELS = {"mobilenet_v2": "MobileNet_V2_Weights",
               "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
               "mobilenet_v3_small": "MobileNet_V3_Small_Weights"}


def demo(args):
    import torch
    import torchvision

    from fastdw import backend, models
    from fastdw.models import weights as _weights

    enum = getattr(models, DEMO_MODELS[args.model]).IMAGENET1K_V1
    path = _weights.local_checkpoint(enum)
    try:
        ours = getattr(models, args.model)(weights=enum if path else None).eval()
    except _weights.WeightsUnavailableError as err:  # a damaged checkpoint: say which, and how
        sys.exit(f"fastdw demo: {err}")
    stock = getattr(torchvision.models, args.model)().eval()
    stock.load_state_dict(ours.state_dict())  # same weights in both, pretrained or not
    if path:
        print(f"model: {args.model}, weights: {enum} from {path}")
    else:
        banner = "!" * 78
        print(f"{banner}\nWARNING: no {enum} checkpoint on this machine; using RANDOM weights,\n"
              f"so the labels below are meaningless. {_weights.offline_remedy(enum)} Online, "
              f"fastdw.models.{args.model}(weights='IMAGENET1K_V1') downloads it once.\n"
              f"{banner}")

    image, name = args.image or _image(None)
    x = enum.transforms()(image).unsqueeze(0)
    categories = enum.meta["categories"]
    print(f"image: {name} -> input {tuple(x.shape)} float32")
    with torch.inference_mode():
        logits = {"fastdw": ours(x), "torchvision": stock(x)}
        for label, out in logits.items():
            probs, idx = out.softmax(1)[0].topk(5)
            print(f"\ntop-5 {label}:")
            for p, i in zip(probs.tolist(), idx.tolist()):
                print(f"  {p:7.2%}  {categories[i]}")
        diff = (logits["fastdw"] - logits["torchvision"]).abs().max().item()
        print(f"\nmax |logit difference| fastdw vs torchvision: {diff:.3g}")
        disabled = sorted(backend.disabled_ops())
        print(f"fastdw backend: {backend.resolve(None, 'cpu')}"
              + (f"; run on stock PyTorch by the kill switch: {', '.join(disabled)}"
                 if disabled else ""))
        # Alternate the two providers so machine noise hits both alike.
        runs = {"fastdw": [], "torchvision": []}
        for _ in range(args.rounds):
            runs["fastdw"].append(_median_ms(ours, x, args.runs))
            runs["torchvision"].append(_median_ms(stock, x, args.runs))
    print(f"latency (median ms, batch 1, fp32, {torch.get_num_threads()} threads, eager, "
          f"{args.rounds}x{args.runs} runs each):")
    for label, times in runs.items():
        print(f"  {label:<12} {statistics.median(times):8.2f} ms")


def info(args):
    import torch
    import torchvision

    import fastdw
    print(fastdw.format_info())
    print(f"fastdw {fastdw.__version__}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")


def main(argv=None):
    from fastdw.bench import run as bench
    parser = argparse.ArgumentParser(prog="python -m fastdw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="classify a photo with a fastdw and a torchvision "
                              "MobileNet and compare labels, logits and latency")
    run.add_argument("--model", choices=sorted(DEMO_MODELS), default="mobilenet_v2",
                     help="which model (default mobilenet_v2)")
    run.add_argument("--image", type=_image_arg,
                     help="image file (default: skimage.data.chelsea())")
    run.add_argument("--runs", type=bench.positive_int, default=5,
                     help="timed runs per round (default 5)")
    run.add_argument("--rounds", type=bench.positive_int, default=3,
                     help="alternating rounds (default 3)")
    run.set_defaults(func=demo)
    commands.add_parser("info", help="list backends and why each is or is not usable"
                        ).set_defaults(func=info)
    timing = commands.add_parser("bench", help="time fastdw against stock PyTorch, "
                                 "torch.compile, ONNX Runtime and OpenVINO on this machine, "
                                 "each alone in its own process, and write a dated report")
    bench.add_arguments(timing)
    timing.set_defaults(func=bench.main)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
