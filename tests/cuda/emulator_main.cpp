// Runs every emulator self-test case (csrc/cuda/emulator/selftest.h) under a few seeds, with and
// without the race detector, and prints one line per run: "<case> <racecheck> <seed> ok" or
// "... error: <report>". tests/cuda/test_cuda_sanitizer.py builds it with ASan + UBSan.
#include <cstdio>

#include "emulator/selftest.h"

int main() {
  for (const auto& entry : fastdw_emu_selftest::cases())
    for (int racecheck = 0; racecheck < 2; ++racecheck)
      for (uint64_t seed = 1; seed <= 3; ++seed) {
        std::printf("%s %d %llu ", entry.first.c_str(), racecheck,
                    static_cast<unsigned long long>(seed));
        try {
          fastdw_emu_selftest::run(entry.first, seed, racecheck, 80);
          std::printf("ok\n");
        } catch (const fastdw_emu::Error& e) {
          std::printf("error: %s\n", e.what());
        }
      }
  return 0;
}
