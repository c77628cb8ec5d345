"""Where emails live in Redis, shared by the producer and the worker: the key layout, the
Redis clients built from the settings, the embedded default server, and the census."""
