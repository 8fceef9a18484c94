/* transport.h — how device collectives move data (devcomm.h), as a setting: apart, so that the
 * config and the model name it without the MPI headers. */
#ifndef DAM_TRANSPORT_H
#define DAM_TRANSPORT_H

typedef enum { DAM_TRANSPORT_AUTO = 0, DAM_TRANSPORT_MPI = 1, DAM_TRANSPORT_NCCL = 2 } DamTransport;

#endif
