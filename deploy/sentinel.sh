#!/bin/sh
# A Redis Sentinel for emailq (docker-compose.sentinel.yml). Sentinel rewrites its config
# file as it learns (the current primary, the other Sentinels, the epoch), so the file
# lives in the container's volume and is written only the first time; later starts keep
# what this Sentinel knew.
#
#   SENTINEL_MASTER   the service name (EMAILQ_REDIS_SENTINEL_MASTER)
#   SENTINEL_PRIMARY  the host that is primary at the very first start
#   REDIS_PASSWORD    the Redis servers' password (requirepass)
#   DOWN_AFTER        ms of silence before the primary is taken for down
#   SENTINEL_CONF     where the config lives (default /data/sentinel.conf)
#   TLS_DIR           if set: TLS only (port 26379 speaks nothing else), to clients, to the
#                     Redis servers and to the other Sentinels, with ca.pem, redis.pem and
#                     redis.key from this directory (docker-compose.sentinel-tls.yml). Read
#                     at the first start only, like the rest: turning TLS on later needs a
#                     fresh volume.
set -eu
conf=${SENTINEL_CONF:-/data/sentinel.conf}
if [ -n "${TLS_DIR:-}" ]; then
  listen="port 0
tls-port 26379
tls-cert-file ${TLS_DIR}/redis.pem
tls-key-file ${TLS_DIR}/redis.key
tls-ca-cert-file ${TLS_DIR}/ca.pem
tls-replication yes"
else
  listen="port 26379"
fi
if [ ! -f "$conf" ]; then
  cat > "$conf" <<EOF
${listen}
# Names, not container addresses, which change when a container is recreated.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $(hostname)
sentinel monitor ${SENTINEL_MASTER} ${SENTINEL_PRIMARY} 6379 2
sentinel auth-pass ${SENTINEL_MASTER} ${REDIS_PASSWORD}
sentinel down-after-milliseconds ${SENTINEL_MASTER} ${DOWN_AFTER}
sentinel failover-timeout ${SENTINEL_MASTER} 60000
sentinel parallel-syncs ${SENTINEL_MASTER} 1
EOF
fi
exec redis-sentinel "$conf"
