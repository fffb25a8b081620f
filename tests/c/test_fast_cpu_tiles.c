/*
 * test_fast_cpu_tiles.c -- test_fast_cpu's configurations with the opt-in
 * lane-major tiles (NATTEN_CPU_TILES=1, forward and backward) and with the
 * blocked forward's 5-position task segments (NATTEN_CPU_FWD_SEGQ=5, forward
 * only), in their own executable so that each stays inside ctest's time
 * limit under the sanitizers.
 */
#define FAST_CPU_MODE_LIST 2, 3
#define FAST_CPU_EXTRAS 0
#include "test_fast_cpu.c"
