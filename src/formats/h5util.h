/* h5util.h — one macro to check every HDF5 call: on failure it names the call, the file (the
 * `what` string in scope) and the rank, and stops every rank (dam_fail). */
#ifndef DAM_H5UTIL_H
#define DAM_H5UTIL_H

#include <errno.h>
#include <hdf5.h>
#include <string.h>

#include "util.h"

/* Evaluate an HDF5 call returning herr_t or hid_t; a negative result fails naming `what` and the
 * system's reason when the call set errno (a full disk: "No space left on device"). */
#define DAM_H5_CHECK(call, what)                                                                             \
    ({                                                                                                       \
        errno = 0;                                                                                           \
        __typeof__(call) dam_h5_rc_ = (call);                                                                \
        if (dam_h5_rc_ < 0)                                                                                  \
            dam_fail("%s: HDF5 call %s failed%s%s%s", (what), #call, errno ? " (" : "",                      \
                     errno ? strerror(errno) : "", errno ? ")" : "");                                        \
        dam_h5_rc_;                                                                                          \
    })

/* Silence HDF5's own error-stack printing so that an error is one line (ours). */
static inline void dam_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

#endif
