#ifndef TESSERA_CLZ4_SHIM_H
#define TESSERA_CLZ4_SHIM_H
#include <lz4.h>
#endif
