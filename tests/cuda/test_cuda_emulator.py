"""fastdw's CUDA emulator (csrc/cuda/emulator) catches what a GPU would leave undefined or hang
on. Its self-test kernels (csrc/cuda/emulator/selftest.h) run through the test op
fastdw_cuda_emu.emulator_selftest: correct kernels must pass under every seed, with and without
the race detector, and every planted bug must be reported under every seed, as a Python
RuntimeError naming the problem and the seed that replays it. The tensor-core cases check the
emulator's mma.sync and ldmatrix against the PTX ISA's fragment layouts: fragments gathered by
the layout from global memory, and a GEMM tile staged by cp.async and loaded by ldmatrix, must
give the exact product."""
import pytest
import torch

SEEDS = (1, 2, 3, 4, 5)

CORRECT = ("reverse", "warp_sum", "tiles", "dynamic_reverse", "warp_exchange", "ballot",
           "shared_vector", "mma_fragments_fp16", "mma_fragments_bf16", "ldmatrix_mma",
           "ldmatrix_trans_mma", "cp_async", "cp_async_rounds")

# case -> (racecheck, what the report must say)
PLANTED = {
    # Without the detector a missing barrier shows as a wrong result (a read of poisoned or not
    # yet written shared memory), with it as a race.
    "missing_barrier": (False, "wrong result"),
    "missing_barrier+race": (True, "shared-memory race on tile"),
    "divergent_shuffle": (False, r"__shfl_down_sync at .*selftest.h:\d+.*(has exited|never "
                                 r"completes)"),
    "shared_out_of_bounds": (False, r"out-of-bounds shared-memory access tile\[64\]"),
    "shared_race": (True, "shared-memory race on tile.*with no __syncthreads between"),
    "barrier_after_exit": (False, r"__syncthreads at .*selftest.h:\d+.* is never reached by "
                                  r"threads .* which exited"),
    "barrier_call_sites": (False, "__syncthreads reached at different call sites"),
    "shuffle_mask_mismatch": (False, "every lane of the mask must make the same call"),
    "shuffle_outside_mask": (False, "reads lane 20, which is not in mask 0xffff"),
    "misaligned_shared_vector": (False, "misaligned shared-memory access tile"),
    "misaligned_global_vector": (False, r"misaligned 16-byte global load .*address % 16 = 4"),
    "static_shared_over_limit": (False, "over the 49152 allowed on sm_80"),
    "block_too_large": (False, "invalid launch: a block of more than 1024 threads"),
    "dynamic_shared_over_arch": (False, "over the 166912 of sm_80"),
    # A cp.async into a buffer others still read (a missing barrier after the reads): a race
    # from the copy's issue under the detector, else a read of the next round's data.
    "cp_async_overwrite": (False, "wrong result|cp.async into it is in flight"),
    "cp_async_overwrite+race": (True, "shared-memory race on"),
    "cp_async_before_wait": (False, r"shared-memory access tile\[\d+\] \(4-byte read\) while a "
                                    r"cp.async into it is in flight"),
}


def test_every_case_is_tested(emulator):
    planted = {name.split("+")[0] for name in PLANTED}
    assert sorted(emulator.emulator_selftest_names()) == sorted(set(CORRECT) | planted)


@pytest.mark.parametrize("racecheck", [False, True])
@pytest.mark.parametrize("case", CORRECT)
def test_correct_kernel_passes(emulator, case, racecheck):
    for seed in SEEDS:
        emulator.emulator_selftest(case, seed, racecheck, 80)


@pytest.mark.parametrize("case", PLANTED)
def test_planted_bug_is_reported(emulator, case):
    racecheck, message = PLANTED[case]
    for seed in SEEDS:
        with pytest.raises(RuntimeError, match=message) as caught:
            emulator.emulator_selftest(case.split("+")[0], seed, racecheck, 80)
        assert f"seed {seed}" in str(caught.value)


def test_limits_follow_the_architecture(emulator):
    with pytest.raises(RuntimeError, match="over the 49152 allowed on sm_90"):
        emulator.emulator_selftest("static_shared_over_limit", 1, False, 90)
    with pytest.raises(RuntimeError, match="over the 232448 of sm_90"):
        emulator.emulator_selftest("dynamic_shared_over_arch", 1, False, 90)


def test_a_seed_replays_the_same_run(emulator):
    """The thread order comes from the seed alone: one seed gives one report, and seeds differ
    in what the missing barrier leaves unwritten."""
    def report(seed):
        with pytest.raises(RuntimeError) as caught:
            emulator.emulator_selftest("missing_barrier", seed, False, 80)
        return str(caught.value)
    assert report(7) == report(7)
    assert len({report(seed) for seed in SEEDS}) > 1


@pytest.mark.parametrize("variable, value, message", [
    ("FASTDW_CUDA_EMULATE_SEED", "abc", "FASTDW_CUDA_EMULATE_SEED must be"),
    ("FASTDW_CUDA_EMULATE_SEED", "-1", "FASTDW_CUDA_EMULATE_SEED must be"),
    ("FASTDW_CUDA_EMULATE_SEED", "1" * 30, "FASTDW_CUDA_EMULATE_SEED must be"),
    ("FASTDW_CUDA_EMULATE_ARCH", "sm_90", "FASTDW_CUDA_EMULATE_ARCH must be 80 or 90"),
    ("FASTDW_CUDA_EMULATE_ARCH", "75", "FASTDW_CUDA_EMULATE_ARCH must be 80 or 90"),
    ("FASTDW_CUDA_EMULATE_RACECHECK", "yes", "FASTDW_CUDA_EMULATE_RACECHECK must be 0 or 1"),
])
def test_a_misspelt_setting_is_named(emulator, monkeypatch, variable, value, message):
    """A setting the emulator cannot honour is an error naming it, not silently the default (a
    seed of 0, sm_80, no race check)."""
    monkeypatch.setenv(variable, value)
    x = torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=message):
        emulator.dwconv_bn_act(x, torch.randn(4, 1, 3, 3), torch.rand(4), torch.rand(4), 1, 1,
                               1, "relu")


@pytest.mark.parametrize("arch", [75, 0])
def test_selftest_names_an_unknown_arch(emulator, arch):
    with pytest.raises(RuntimeError, match=f"arch must be 80 or 90, got {arch}"):
        emulator.emulator_selftest("reverse", 1, False, arch)
