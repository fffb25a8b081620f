/*
 * test_fast_cpu_tiles.c -- test_fast_cpu's configurations with the opt-in
 * lane-major tiles (NATTEN_CPU_TILES=1, forward and backward), in their own
 * executable so that each stays inside ctest's time limit under the
 * sanitizers.
 */
#define FAST_CPU_MODE_LIST 2
#define FAST_CPU_EXTRAS 0
#include "test_fast_cpu.c"
