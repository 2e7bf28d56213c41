#ifndef TESSERA_CZEROMQ_SHIM_H
#define TESSERA_CZEROMQ_SHIM_H
#include <zmq.h>
#include <errno.h>

/// errno as seen by libzmq (the same thread-local errno Swift cannot read portably).
static inline int CZeroMQ_errno(void) { return zmq_errno(); }
#endif
