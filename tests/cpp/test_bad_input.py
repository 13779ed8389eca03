"""Bad arguments to the raw C++ entry points (torch.ops.fastdw_cpp.*, which skip the Python op's
checks) raise RuntimeError naming the argument, before any memory is touched: never a crash."""
import pytest
import torch

pytest.importorskip("fastdw._C", reason="fastdw._C is not built")
ops = torch.ops.fastdw_cpp


def dw_args(**change):
    args = dict(x=torch.randn(2, 8, 6, 6), weight=torch.randn(8, 1, 3, 3),
                scale=torch.ones(8), shift=torch.zeros(8), stride=1, padding=1, dilation=1,
                act="relu6")
    args.update(change)
    return args


def pw_args(**change):
    args = dict(x=torch.randn(2, 8, 5, 5), weight=torch.randn(4, 8), scale=torch.ones(4),
                shift=torch.zeros(4), act="relu", residual=None)
    args.update(change)
    return args


def ir_args(**change):
    """The block's tensors are changed by name, like the other arguments; they are passed as one
    list (weights) in the kernel's order."""
    block = dict(expand_w=torch.randn(16, 8), expand_scale=torch.ones(16),
                 expand_shift=torch.zeros(16), dw_w=torch.randn(16, 1, 3, 3),
                 dw_scale=torch.ones(16), dw_shift=torch.zeros(16), project_w=torch.randn(8, 16),
                 project_scale=torch.ones(8), project_shift=torch.zeros(8), se_w1=None,
                 se_b1=None, se_w2=None, se_b2=None)
    block.update((name, change.pop(name)) for name in list(change) if name in block)
    args = dict(x=torch.randn(1, 8, 6, 6), weights=[block[n] for n in ops.block_weight_names()],
                stride=1, act="relu6", residual=True, se_act="relu", se_gate="hardsigmoid")
    args.update(change)
    return args


IR_WEIGHTS = ir_args()["weights"]


def expanded(shape, size):
    """A tensor whose sizes are huge but whose storage is one element (stride 0 everywhere)."""
    return torch.zeros(1).expand(*shape[:-1], size) if size else torch.zeros(1).expand(*shape)


BAD_DW = {
    "x rank": (dw_args(x=torch.randn(8, 6, 6)), "x must be 4-D"),
    "x dtype": (dw_args(x=torch.randn(2, 8, 6, 6, dtype=torch.float64)), "x must be float32"),
    "x int": (dw_args(x=torch.ones(2, 8, 6, 6, dtype=torch.int32)), "x must be float32"),
    "x empty": (dw_args(x=torch.randn(0, 8, 6, 6)), "x must not be empty"),
    # Non-CPU and sparse tensors are refused by the dispatcher (no kernel for their key) before
    # the kernel's own device/layout checks, which cover mixed calls reaching the CPU kernel.
    "x meta": (dw_args(x=torch.randn(2, 8, 6, 6, device="meta")), "Meta|CPU tensor"),
    "weight meta": (dw_args(weight=torch.randn(8, 1, 3, 3, device="meta")), "Meta|CPU tensor"),
    "x sparse": (dw_args(x=torch.randn(2, 8, 6, 6).to_sparse()), "SparseCPU|dense"),
    "x too small": (dw_args(x=torch.randn(2, 8, 1, 1), padding=0), "too small for kernel"),
    "x huge": (dw_args(x=expanded((1, 8, 6, 2**31), 0), weight=torch.randn(8, 1, 3, 3)),
               "x has size 2147483648"),
    "weight rank": (dw_args(weight=torch.randn(8, 3, 3)), "weight must be 4-D"),
    "weight channels": (dw_args(weight=torch.randn(4, 1, 3, 3)), "weight must have C = 8"),
    "weight multiplier": (dw_args(weight=torch.randn(16, 1, 3, 3)), "multipliers > 1"),
    "weight groups": (dw_args(weight=torch.randn(8, 2, 3, 3)), "weight must have size 1"),
    "weight square": (dw_args(weight=torch.randn(8, 1, 3, 5)), "square window"),
    "weight dtype": (dw_args(weight=torch.randn(8, 1, 3, 3, dtype=torch.bfloat16)),
                     "weight must have dtype Float"),
    "scale size": (dw_args(scale=torch.ones(7)), "scale must have size 8"),
    "scale dtype": (dw_args(scale=torch.ones(8, dtype=torch.float64)), "scale must have dtype"),
    "shift rank": (dw_args(shift=torch.zeros(8, 1)), "shift must be 1-D"),
    "stride": (dw_args(stride=0), "stride must be in"),
    "padding": (dw_args(padding=-1), "padding must be in"),
    "padding huge": (dw_args(padding=2**40), "padding must be in"),
    "output huge": (dw_args(padding=2**30), "makes an output of size 2147483652"),
    "dilation": (dw_args(dilation=0), "dilation must be in"),
    "act": (dw_args(act="gelu"), "act must be one of"),
}

BAD_PW = {
    "x dtype": (pw_args(x=torch.randn(2, 8, 5, 5, dtype=torch.bfloat16)), "x must be float32"),
    "weight 3x3": (pw_args(weight=torch.randn(4, 8, 3, 3)), "weight must be 2-D"),
    "weight c_in": (pw_args(weight=torch.randn(4, 7)), "weight must have size 8"),
    "scale": (pw_args(scale=torch.ones(5)), "scale must have size 4"),
    "residual shape": (pw_args(residual=torch.randn(2, 4, 5, 4)), "residual must have size 5"),
    "residual dtype": (pw_args(residual=torch.randn(2, 4, 5, 5, dtype=torch.float64)),
                       "residual must have dtype"),
    "act": (pw_args(act=""), "act must be one of"),
}

BAD_IR = {
    "x rank": (ir_args(x=torch.randn(8, 6, 6)), "x must be 4-D"),
    "expand_w c_in": (ir_args(expand_w=torch.randn(16, 4)), "expand_w must have size 8"),
    "expand_scale missing": (ir_args(expand_scale=None), "expand_scale and expand_shift"),
    "expand_scale without expand_w": (ir_args(expand_w=None), "given without expand_w"),
    "dw_w hidden": (ir_args(dw_w=torch.randn(8, 1, 3, 3)), "dw_w must have size 16"),
    "dw_w even": (ir_args(dw_w=torch.randn(16, 1, 4, 4)), "odd square"),
    "dw_scale": (ir_args(dw_scale=torch.ones(15)), "dw_scale must have size 16"),
    "project_w": (ir_args(project_w=torch.randn(8, 15)), "project_w must have size 16"),
    "project_shift": (ir_args(project_shift=torch.zeros(9)), "project_shift must have size 8"),
    "residual stride": (ir_args(stride=2), "residual needs stride 1"),
    "stride": (ir_args(stride=0, residual=False), "stride must be in"),
    "se partial": (ir_args(se_w1=torch.randn(4, 16)), "needs all of se_w1"),
    "se_w2 shape": (ir_args(se_w1=torch.randn(4, 16), se_b1=torch.zeros(4),
                            se_w2=torch.randn(16, 5), se_b2=torch.zeros(16)),
                    "se_w2 must have size 4"),
    "x dtype": (ir_args(x=torch.randn(1, 8, 6, 6, dtype=torch.bfloat16)), "x must be float32"),
    "act": (ir_args(act="tanh"), "act must be one of"),
    "se_act": (ir_args(se_act="gelu"), "se_act must be one of none, relu,"),
    "se_gate": (ir_args(se_gate="relu"),
                "se_gate must be one of hardsigmoid, sigmoid; got 'relu'"),
    "se_gate with se": (ir_args(se_w1=torch.randn(4, 16), se_b1=torch.zeros(4),
                                se_w2=torch.randn(16, 4), se_b2=torch.zeros(16),
                                se_gate="Sigmoid"), "se_gate must be one of"),
    "weights short": (ir_args(weights=IR_WEIGHTS[:12]),
                      r"weights must have 13 entries \(expand_w\?, .*se_b2\?.*\), got 12"),
    "weights long": (ir_args(weights=IR_WEIGHTS + [None]), "weights must have 13 entries"),
    "dw_w missing": (ir_args(dw_w=None), r"dw_w is required \(weights\[3\]\), got None"),
    "project_shift missing": (ir_args(project_shift=None),
                              r"project_shift is required \(weights\[8\]\)"),
}


def _run(op, args, message):
    with pytest.raises(RuntimeError, match=message):
        op(*args.values())


@pytest.mark.parametrize("name", BAD_DW)
def test_dwconv_bn_act(name):
    _run(ops.dwconv_bn_act, *BAD_DW[name])


@pytest.mark.parametrize("name", BAD_PW)
def test_pwconv_bn_act(name):
    _run(ops.pwconv_bn_act, *BAD_PW[name])


@pytest.mark.parametrize("name", BAD_IR)
def test_inverted_residual(name):
    _run(ops.inverted_residual, *BAD_IR[name])


def test_good_arguments_run():
    # The baselines the bad cases above are derived from are themselves accepted.
    assert ops.dwconv_bn_act(*dw_args().values()).shape == (2, 8, 6, 6)
    assert ops.pwconv_bn_act(*pw_args().values()).shape == (2, 4, 5, 5)
    assert ops.inverted_residual(*ir_args().values()).shape == (1, 8, 6, 6)
    # se_act and se_gate default to MobileNetV3's relu and hardsigmoid, as the public op's do
    args = ir_args(se_w1=torch.randn(4, 16), se_b1=torch.zeros(4), se_w2=torch.randn(16, 4),
                   se_b2=torch.zeros(16))
    torch.testing.assert_close(ops.inverted_residual(*list(args.values())[:5]),
                               ops.inverted_residual(*args.values()), rtol=0, atol=0)


def test_block_weight_names_match_python():
    # The weights list is built in Python by BlockWeights' field order and read in C++ by
    # csrc/cpu/block_weights.h's: the two lists must be the same.
    from fastdw.contract import BlockWeights
    assert tuple(ops.block_weight_names()) == BlockWeights._fields


def test_program_checks_its_steps_and_inputs():
    Program = torch.classes.fastdw_cpp.Program
    program = Program()
    with pytest.raises(RuntimeError, match="the program has no steps"):
        program.run(torch.randn(1, 8, 4, 4))
    with pytest.raises(RuntimeError, match="act must be one of"):
        program.add_act("gelu")
    with pytest.raises(RuntimeError, match="stride must be in"):
        program.add_conv(torch.randn(8, 3, 3, 3), torch.randn(8), 0, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="bias must have size 4"):
        program.add_linear(torch.randn(4, 8), torch.randn(5), "none")
    # A block's weights list is checked when the step is added, not at the first run.
    with pytest.raises(RuntimeError, match="weights must have 13 entries"):
        program.add_inverted_residual(IR_WEIGHTS[:12], 1, "relu6", True, "relu", "hardsigmoid")
    with pytest.raises(RuntimeError, match="dw_w is required"):
        program.add_inverted_residual(ir_args(dw_w=None)["weights"], 1, "relu6", True, "relu",
                                      "hardsigmoid")
    with pytest.raises(RuntimeError, match="se_act must be one of"):
        program.add_inverted_residual(IR_WEIGHTS, 1, "relu6", True, "gelu", "hardsigmoid")
    with pytest.raises(RuntimeError, match="se_gate must be one of"):
        program.add_inverted_residual(IR_WEIGHTS, 1, "relu6", True, "silu", "hardswish")
    program.add_pwconv_bn_act(*list(pw_args().values())[1:5])
    program.add_global_avg_pool()
    program.add_linear(torch.randn(3, 4), torch.randn(3), "relu")
    assert program.steps() == ["pwconv_bn_act", "global_avg_pool", "linear"]
    assert program.run(torch.randn(2, 8, 5, 5)).shape == (2, 3)
    # What a step's kernel refuses is raised with the step named, before memory is touched.
    for x, message in [(torch.randn(2, 7, 5, 5), (r"weight must have size 7.*\(in step 0 "
                                                  r"\(pwconv_bn_act\) of the program\)")),
                       (torch.randn(2, 8, 5, 5, device="meta"), "x must be a CPU tensor"),
                       (torch.randn(2, 8, 5, 5, dtype=torch.float64), "x must be float32")]:
        with pytest.raises(RuntimeError, match=message):
            program.run(x)
    two_d = Program()
    two_d.add_linear(torch.randn(3, 4), torch.randn(3), "none")
    with pytest.raises(RuntimeError, match=r"x must be \(N >= 1, 4\).*in step 0 \(linear\)"):
        two_d.run(torch.randn(2, 4, 1, 1))
    leading_act = Program()  # its input is the caller's tensor: computed on a copy
    leading_act.add_act("relu")
    x = torch.randn(2, 8, 3, 3)
    before = x.clone()
    torch.testing.assert_close(leading_act.run(x), torch.relu(before), rtol=0, atol=0)
    assert torch.equal(x, before)
    pool = Program()
    pool.add_global_avg_pool()
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        pool.run(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="weight must be 4-D"):
        Program().add_conv(torch.randn(8, 27), torch.randn(8), 1, 1, 1, 1, "none")
    stem = Program()  # the direct conv kernel (csrc/cpu/conv_bias_act.cpp)
    stem.add_conv(torch.randn(8, 3, 3, 3), torch.randn(8), 2, 1, 1, 1, "relu")
    for x, message in [(torch.randn(1, 4, 9, 9), r"x has 4 channels but weight takes 3.*"
                                                 r"in step 0 \(conv\)"),
                       (torch.randn(1, 3, 9, 9, dtype=torch.float64), "x must be float32"),
                       (torch.randn(1, 3, 9), "x must be 4-D"),
                       (torch.randn(0, 3, 9, 9), "x must not be empty")]:
        with pytest.raises(RuntimeError, match=message):
            stem.run(x)
    weight = torch.randn(8, 3, 3, 3)  # a lazy view's memory holds the values before negation
    with pytest.raises(RuntimeError, match="weight is a lazily negated or conjugated view"):
        Program().add_conv(torch.complex(torch.zeros_like(weight), weight).conj().imag,
                           torch.randn(8), 1, 1, 1, 1, "none")
    negated_bias = Program()
    negated_bias.add_conv(weight, torch.complex(torch.zeros(8), torch.randn(8)).conj().imag,
                          1, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="bias is a lazily negated or conjugated view"):
        negated_bias.run(torch.randn(1, 3, 5, 5))
    bias_mismatch = Program()
    bias_mismatch.add_conv(torch.randn(8, 3, 3, 3), torch.randn(7), 1, 1, 1, 1, "none")
    with pytest.raises(RuntimeError, match="bias must have size 8"):
        bias_mismatch.run(torch.randn(1, 3, 5, 5))


def test_program_refuses_wrappers_it_cannot_see_through():
    from torch._subclasses.fake_tensor import FakeTensorMode
    program = torch.classes.fastdw_cpp.Program()
    program.add_pwconv_bn_act(*list(pw_args().values())[1:5])
    x = torch.randn(2, 8, 5, 5)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
    with pytest.raises(RuntimeError, match="x has no data in memory"):
        program.run(fake)
    with pytest.raises(RuntimeError, match="cannot run inside a functorch transform"):
        torch.func.functionalize(lambda t: program.run(x))(torch.zeros(1))
    with pytest.raises(RuntimeError, match="x is a lazily negated or conjugated view"):
        program.run(torch._neg_view(x))
