#ifndef TESSERA_CZLIB_SHIM_H
#define TESSERA_CZLIB_SHIM_H
// zlib: deflate for PNG images (HiPS tiles, the demo's cutout) and their CRC-32.
#include <zlib.h>
#endif
