#ifndef TESSERA_LIBXML2_SHIM_H
#define TESSERA_LIBXML2_SHIM_H
// libxml2's pull parser (xmlTextReader), for VOTable uploads.
#include <libxml/xmlreader.h>
#include <libxml/xmlerror.h>
#endif
