// The CUDA backend's device code for nvcc: every kernel instantiation its host launchers can
// choose, through explicit instantiation of the launchers (tests/cuda/test_cuda_resources.py
// compiles this file for sm_80 and sm_90 and checks each kernel's registers and spills).
#include "dwconv_backward.cuh"
#include "dwconv_bn_act.cuh"
#include "inverted_residual.cuh"
#include "pwconv_backward.cuh"
#include "pwconv_bn_act.cuh"

namespace fastdw_cuda {

template void launch_dwconv_bn_act<float>(const DwParams<float>&, Stream);
template void launch_dwconv_bn_act<__half>(const DwParams<__half>&, Stream);
template void launch_dwconv_bn_act<__nv_bfloat16>(const DwParams<__nv_bfloat16>&, Stream);
template bool launch_dwconv_bn_act_nchw<float>(const DwParams<float>&, Stream);
template bool launch_dwconv_bn_act_nchw<__half>(const DwParams<__half>&, Stream);
template bool launch_dwconv_bn_act_nchw<__nv_bfloat16>(const DwParams<__nv_bfloat16>&, Stream);
template void launch_dwconv_bn_act_backward<float>(const DwBackParams<float>&, Stream);
template void launch_dwconv_bn_act_backward<__half>(const DwBackParams<__half>&, Stream);
template void launch_dwconv_bn_act_backward<__nv_bfloat16>(const DwBackParams<__nv_bfloat16>&,
                                                           Stream);
template void launch_pwconv_bn_act<float>(const PwParams<float>&, Stream);
template void launch_pwconv_bn_act<__half>(const PwParams<__half>&, Stream);
template void launch_pwconv_bn_act<__nv_bfloat16>(const PwParams<__nv_bfloat16>&, Stream);
template void launch_pwconv_bn_act_backward<float>(const PwBackParams<float>&, Stream);
template void launch_pwconv_bn_act_backward<__half>(const PwBackParams<__half>&, Stream);
template void launch_pwconv_bn_act_backward<__nv_bfloat16>(const PwBackParams<__nv_bfloat16>&,
                                                           Stream);
template bool launch_inverted_residual<float>(const IrParams<float>&, Stream);
template bool launch_inverted_residual<__half>(const IrParams<__half>&, Stream);
template bool launch_inverted_residual<__nv_bfloat16>(const IrParams<__nv_bfloat16>&, Stream);
template bool launch_se_gate_project<float>(const SeParams<float>&, Stream);
template bool launch_se_gate_project<__half>(const SeParams<__half>&, Stream);
template bool launch_se_gate_project<__nv_bfloat16>(const SeParams<__nv_bfloat16>&, Stream);

}  // namespace fastdw_cuda
