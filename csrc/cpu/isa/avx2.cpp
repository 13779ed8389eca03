// The AVX2 + FMA copy of loops.h (8 fp32 lanes). Only called when the CPU reports avx2 and fma.
#include <cstdint>
#include <cstring>
#pragma GCC target("avx2,fma,f16c")
#define FASTDW_ISA avx2
#define FASTDW_VW 8
#include "loops.h"
