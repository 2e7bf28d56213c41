#ifndef TESSERA_CFITSIO_SHIM_H
#define TESSERA_CFITSIO_SHIM_H
// cfitsio's long names (fits_open_file, ...) are macros; Swift calls the ff* functions directly.
#include <fitsio.h>
#endif
