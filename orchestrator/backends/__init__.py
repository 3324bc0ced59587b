"""Where trials run: the protocol the driver needs (backend), and Ray (ray_backend, the only Ray import)."""
