"""The worker's side of an email's places in Redis: taking, in flight, the retry schedule,
the dead-letter queue, the heartbeat that keeps a worker's emails its own, and the
housekeeping that reclaims and sweeps them."""
