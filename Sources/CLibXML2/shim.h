#ifndef TESSERA_LIBXML2_SHIM_H
#define TESSERA_LIBXML2_SHIM_H
// libxml2's pull parser (xmlTextReader), for VOTable uploads.
//
// Debian builds libxml2 with ICU, so <libxml/encoding.h> would include the system's
// <unicode/ucnv.h>. Swift's Foundation carries its own ICU (_FoundationICU) with a different
// UErrorCode, and a module that sees both fails to build ("'UErrorCode' has different
// definitions in different modules") on a fresh module cache. The ICU part of encoding.h only
// adds fields at the end of xmlCharEncodingHandler, a struct this code never allocates or reads
// (it holds pointers at most), so the ICU declarations are left out.
#include <libxml/xmlversion.h>
#undef LIBXML_ICU_ENABLED
#include <libxml/xmlreader.h>
#include <libxml/xmlerror.h>
#endif
