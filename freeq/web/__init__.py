"""The web listener: IRC over WebSocket, the REST API, the auth broker and the web client."""
