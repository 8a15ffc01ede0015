/*  gw_static — the static assets the gateways serve, embedded into the binary at build time
 *  (console/embed.cmake writes the table): the live console at /console/ (the files of
 *  console/) and the web roster helper at /v1/<file> (the .js and .d.ts files of clients/web/;
 *  a placeholder until clients/web/presence.js exists). Nothing is read from disk at run time.
 *
 *  Every answer carries an ETag (the start of the file's SHA-256), and a matching
 *  If-None-Match gets 304. The console is sent with Cache-Control: no-cache (revalidated on each
 *  load, so an upgraded gateway serves the new console at once) and with security headers: a
 *  Content-Security-Policy that allows its own origin only (no inline script, no external
 *  origin, no framing), X-Content-Type-Options: nosniff, X-Frame-Options: DENY and
 *  Referrer-Policy: no-referrer. The helper's files are public, cached for 5 minutes, and sent
 *  with Access-Control-Allow-Origin: * since a module script from another origin needs CORS. */
#ifndef GW_STATIC_H
#define GW_STATIC_H

#include <stddef.h>

#include <h2o.h>

/*  One embedded file. */
typedef struct {
    const char *path;          //  the URL path it is served at (NULL ends the table)
    const unsigned char *data; //  its bytes (followed by a NUL not counted in len)
    size_t len;
    const char *etag;          //  quoted, as sent
} gw_asset_t;

/*  The table written by console/embed.cmake (the build's gw_assets.c). */
extern const gw_asset_t gw_assets[];
extern const size_t gw_nassets;

//  Registers the assets' paths on host (/console, and /v1/<file> per helper file), each with
//  handler `first` (the gateway's header cap) before the asset handler. Call it before the
//  catch-all "/" path is registered: h2o takes the first registered path that matches.
void gw_static_register(h2o_hostconf_t *host, int (*first)(h2o_handler_t *, h2o_req_t *));

//  The asset served at path (after /console and /console/ are mapped to the index), or NULL.
const gw_asset_t *gw_static_find(const char *path, size_t len);

#endif
