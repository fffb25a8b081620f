/*
 * status.c -- status names and the thread-local error message.
 */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

#define NATTEN_MESSAGE_CAPACITY 512

static _Thread_local char natten_message[NATTEN_MESSAGE_CAPACITY];

const char *natten_status_string(natten_status status) {
    switch (status) {
    case NATTEN_STATUS_SUCCESS: return "NATTEN_STATUS_SUCCESS";
    case NATTEN_STATUS_INVALID_ARGUMENT: return "NATTEN_STATUS_INVALID_ARGUMENT";
    case NATTEN_STATUS_NULL_POINTER: return "NATTEN_STATUS_NULL_POINTER";
    case NATTEN_STATUS_ALIASING: return "NATTEN_STATUS_ALIASING";
    case NATTEN_STATUS_OVERFLOW: return "NATTEN_STATUS_OVERFLOW";
    case NATTEN_STATUS_UNSUPPORTED: return "NATTEN_STATUS_UNSUPPORTED";
    case NATTEN_STATUS_OUT_OF_MEMORY: return "NATTEN_STATUS_OUT_OF_MEMORY";
    case NATTEN_STATUS_INTERNAL: return "NATTEN_STATUS_INTERNAL";
    }
    return "NATTEN_STATUS_UNKNOWN";
}

const char *natten_last_error_message(void) { return natten_message; }

void natten_clear_error(void) { natten_message[0] = '\0'; }

natten_status natten_set_error(natten_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(natten_message, sizeof natten_message, fmt, ap);
    va_end(ap);
    if (n < 0) natten_message[0] = '\0';
    return status;
}
