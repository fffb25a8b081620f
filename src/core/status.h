/*
 * status.h -- internal error reporting.  Every library function that fails
 * records a message in a thread-local buffer with natten_set_error and returns
 * the status it was given, so failure paths read
 *     return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT, "%s: kernel[%d]=%lld ...", fn, ...);
 * Messages name the public function, the argument, its value and the rule.
 */
#ifndef NATTEN_CORE_STATUS_H
#define NATTEN_CORE_STATUS_H

#include "natten.h"

#if defined(__GNUC__) || defined(__clang__)
#define NATTEN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define NATTEN_PRINTF(a, b)
#endif

/* Record a printf-style message for this thread and return status unchanged. */
natten_status natten_set_error(natten_status status, const char *fmt, ...) NATTEN_PRINTF(2, 3);

/* Forget the message of this thread (natten_last_error_message() then gives ""). */
void natten_clear_error(void);

#endif /* NATTEN_CORE_STATUS_H */
