"""tether's HTTP/1.1 ASGI server: protocol, lifespan, worker (and later the supervisor)."""
