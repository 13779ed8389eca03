"""Print fastdw's modelled per-layer DRAM bytes, FLOPs and H100 roofline times, and plot them.

    python bench/perf_model.py --model mobilenet_v2 --batch 32 --dtype fp16 [--png out.png]
    python bench/perf_model.py --ablate --model mobilenet_v2 --batch 1 32 --dtype fp16

Every figure is MODELLED by fastdw.perfmodel (no GPU ran): (a) stock eager, (b) BN folded with
the activation in the conv epilogue, (c) the fused design (hidden tensor on chip, the ideal),
(d) fastdw's committed Triton kernels and (e) its committed CUDA kernels, as their launchers run
them (halo recompute, padded tiles, scratch, split blocks, reference fallbacks). See
fastdw/perfmodel.py for the formulas and assumptions.

--ablate: what each issue-13 change of the Triton kernels (perfmodel.TRITON_CHANGES) is modelled
to save in (d): the model run with that change switched off, minus the committed kernels.
"""
import argparse

from fastdw import perfmodel
from fastdw.bench import modelled

# What --ablate totals over (d)'s kernels: label, Kernel -> figure, unit scale, format.
_FIGURES = (("DRAM MB", lambda k, gpu, dt: k.bytes, 1e-6, "{:+.2f}"),
            ("L2 MB", lambda k, gpu, dt: k.l2, 1e-6, "{:+.2f}"),
            ("launches", lambda k, gpu, dt: k.launches, 1, "{:+d}"),
            ("GFLOP", lambda k, gpu, dt: k.tensor_flops + k.cuda_flops, 1e-9, "{:+.2f}"),
            ("us", lambda k, gpu, dt: k.time(gpu, dt), 1e6, "{:+.1f}"))


def triton_totals(tr, dtype, gpu, off=()):
    """(d)'s totals over the network (see _FIGURES) with the TRITON_CHANGES `off` switched
    off."""
    ks = [k for _, block in perfmodel.kernels(tr, "triton", dtype, gpu, off) for k in block]
    return [sum(f(k, gpu, dtype) for k in ks) for _, f, _, _ in _FIGURES]


def ablation_table(name, batches, dtype, gpu=perfmodel.H100_SXM, resolution=224):
    """Lines of text: per change and batch, what switching it off adds to (d)'s modelled
    totals, i.e. what the committed change saves (negative: what it costs)."""
    head = (f"MODELLED, not measured: what each issue-13 change saves in (d) triton, {name}, "
            f"{resolution}x{resolution}, {dtype}, {gpu.name} ({gpu.sms} SMs, "
            f"{gpu.l2_size >> 20} MiB L2); saved = (d) with the change off - (d) as committed "
            "(negative: what the change costs)")
    lines = ["| change | batch | " + " | ".join(f"saved {label}" for label, *_ in _FIGURES)
             + " |", "|---|---|" + "---|" * len(_FIGURES)]
    committed = []
    for batch in batches:
        tr = perfmodel.trace(name, batch, resolution)
        base = triton_totals(tr, dtype, gpu)
        committed.append(f"(d) as committed, batch {batch} (modelled): " + ", ".join(
            fmt.replace("+", "").format(v * scale) + " " + label
            for (label, _, scale, fmt), v in zip(_FIGURES, base)))
        for change in perfmodel.TRITON_CHANGES:
            off = triton_totals(tr, dtype, gpu, {change})
            saved = [fmt.format((o - v) * scale) for (_, _, scale, fmt), o, v
                     in zip(_FIGURES, off, base)]
            lines.append(f"| {change} | {batch} | " + " | ".join(saved) + " |")
    lines = [head, *committed, *lines]
    lines.append("changes: " + "; ".join(f"{c}: {what}" for c, what
                                         in perfmodel.TRITON_CHANGES.items()))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2", choices=perfmodel.MODELS)
    parser.add_argument("--batch", type=int, nargs="+", default=[32],
                        help="one batch; with --ablate, one or more")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--dtype", default="fp16", choices=tuple(perfmodel.DTYPES))
    parser.add_argument("--png", help="write the modelled per-block plot to this PNG file")
    parser.add_argument("--ablate", action="store_true",
                        help="print what each issue-13 triton change is modelled to save")
    args = parser.parse_args(argv)
    if args.ablate:
        print("\n".join(ablation_table(args.model, args.batch, args.dtype,
                                       resolution=args.resolution)))
        return
    if len(args.batch) != 1:
        parser.error("--batch takes one batch without --ablate")
    report = perfmodel.model(args.model, args.batch[0], args.resolution, args.dtype)
    print("\n".join(modelled.table(report)))
    if args.png:
        modelled.plot(report, args.png)
        print(f"modelled plot written to {args.png}")


if __name__ == "__main__":
    main()
