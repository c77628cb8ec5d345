"""Delivery over HTTP: one attempt (`deliverer`), the HTTP clients behind one seam, the
retry policy, Standard Webhooks signing, and the circuit breaker."""
