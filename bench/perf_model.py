"""Print fastdw's modelled per-layer DRAM bytes, FLOPs and H100 roofline times, and plot them.

    python bench/perf_model.py --model mobilenet_v2 --batch 32 --dtype fp16 [--png out.png]

Every figure is MODELLED by fastdw.perfmodel (no GPU ran): (a) stock eager, (b) BN folded with
the activation in the conv epilogue, (c) the fused design (hidden tensor on chip, the ideal),
(d) fastdw's committed Triton kernels and (e) its committed CUDA kernels, as their launchers run
them (halo recompute, padded tiles, scratch, split blocks, reference fallbacks). See
fastdw/perfmodel.py for the formulas and assumptions.
"""
import argparse

from fastdw import perfmodel
from fastdw.bench import modelled


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2", choices=perfmodel.MODELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--dtype", default="fp16", choices=tuple(perfmodel.DTYPES))
    parser.add_argument("--png", help="write the modelled per-block plot to this PNG file")
    args = parser.parse_args(argv)
    report = perfmodel.model(args.model, args.batch, args.resolution, args.dtype)
    print("\n".join(modelled.table(report)))
    if args.png:
        modelled.plot(report, args.png)
        print(f"modelled plot written to {args.png}")


if __name__ == "__main__":
    main()
