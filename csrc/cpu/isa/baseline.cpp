// The copy of loops.h for any x86-64 (SSE2, 4 fp32 lanes): the fallback that never needs a check.
#include <cstdint>
#include <cstring>
#define FASTDW_ISA baseline
#define FASTDW_VW 4
#include "loops.h"
