// The AVX-512 copy of loops.h (16 fp32 lanes). Only called when the CPU reports avx512f/bw/vl/dq.
#include <cstdint>
#include <cstring>
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define FASTDW_ISA avx512
#define FASTDW_VW 16
#include "loops.h"
