"""IRC transports: the client connection over TCP and TLS (WebSocket reuses it from freeq.web)."""
