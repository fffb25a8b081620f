/*
 * cpu_config_placeholder.c -- stand-in CPU runtime getters so that libnatten
 * links before the fast CPU framework (src/cpu/) lands.  The definitions are
 * weak: once src/cpu/ defines these functions, its strong definitions win in
 * every link, and this file should then be deleted.
 */
#include "natten.h"

#define NATTEN_WEAK __attribute__((weak))

NATTEN_WEAK natten_cpu_isa natten_cpu_isa_get(void) { return NATTEN_CPU_ISA_SCALAR; }

NATTEN_WEAK natten_status natten_cpu_isa_set(natten_cpu_isa isa) {
    return isa == NATTEN_CPU_ISA_SCALAR ? NATTEN_STATUS_SUCCESS : NATTEN_STATUS_INVALID_ARGUMENT;
}

NATTEN_WEAK const char *natten_cpu_isa_name(natten_cpu_isa isa) {
    switch (isa) {
    case NATTEN_CPU_ISA_SCALAR: return "scalar";
    case NATTEN_CPU_ISA_AVX2: return "avx2";
    case NATTEN_CPU_ISA_AVX512: return "avx512";
    case NATTEN_CPU_ISA_NEON: return "neon";
    }
    return "unknown";
}

NATTEN_WEAK int natten_num_threads_get(void) { return 1; }

NATTEN_WEAK natten_status natten_num_threads_set(int n) {
    return n >= 1 ? NATTEN_STATUS_SUCCESS : NATTEN_STATUS_INVALID_ARGUMENT;
}
