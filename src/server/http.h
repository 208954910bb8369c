// The one place that includes cpp-httplib. Debian's libcpp-httplib-dev is a compiled library (the
// header declares, libcpp-httplib.so defines) built with TLS, zlib and brotli support; those macros
// change class layouts (httplib::Client), so every includer must define them exactly as the build did.
#pragma once

#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#ifndef CPPHTTPLIB_ZLIB_SUPPORT
#define CPPHTTPLIB_ZLIB_SUPPORT
#endif
#ifndef CPPHTTPLIB_BROTLI_SUPPORT
#define CPPHTTPLIB_BROTLI_SUPPORT
#endif

#include <httplib.h>
