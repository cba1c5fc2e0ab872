/* tunnel — a pass-through request asking for a protocol upgrade
 * (WebSocket: "Connection: Upgrade" and "Upgrade: websocket") is sent to
 * UPSTREAM_API_URL on a connection of its own, with Upgrade kept.  When
 * the upstream answers 101 Switching Protocols, that answer goes back to
 * the client and from then on bytes are copied both ways, unchanged and
 * unchecked, until either side closes or neither sends anything for
 * WEBSOCKET_IDLE_TIMEOUT_S; at most PASSTHROUGH_BUFFER_BYTES wait in each
 * direction (past that the sender is not read until the receiver caught
 * up).  Any other answer is passed back as it came and the connection
 * then closes.  Counted in turnout_tunnels_total and turnout_tunnels_open.
 *
 * The upstream must be http:// to an IP address (what hpool carries);
 * other upstream URLs answer an Upgrade with 502 upgrade_unsupported. */
#ifndef TURNOUT_TUNNEL_H
#define TURNOUT_TUNNEL_H

struct evhttp_request;
typedef struct proxy proxy;

/* Answers req (exactly once, as every handler): `uri` is the origin-form
 * target, `peer` the client's address. */
void tunnel_start(proxy *p, struct evhttp_request *req, double t0, const char *uri, const char *peer);

#endif
