"""Run as a script by tests/cuda/test_cuda_models.py, in a process with FASTDW_CUDA_EMULATE=1
(read when fastdw is imported): `python mobilenet_v2_emulated.py CHECKPOINT INPUT OUTPUT`
runs fastdw's mobilenet_v2 with the checkpoint, channels_last, on the emulated cuda backend on
the input tensor saved at INPUT, and saves {"logits", "launches"} to OUTPUT: launches holds, for
each inverted_residual call, the emulator's record of the last kernel it launched."""
import sys

import torch

from fastdw import backend, models
from fastdw.kernels import cuda


def main(checkpoint, source, destination):
    launches = []
    kernel = cuda.inverted_residual

    def recorded(*args):
        out = kernel(*args)
        launches.append(torch.ops.fastdw_cuda_emu.last_launch())
        return out

    cuda.inverted_residual = recorded  # the backend looks its kernels up at each call
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.load(source).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), backend.use_backend("cuda"):
        logits = model(x)
    torch.save({"logits": logits, "launches": launches}, destination)


if __name__ == "__main__":
    main(*sys.argv[1:])
