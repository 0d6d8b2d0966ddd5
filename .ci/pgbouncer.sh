#!/usr/bin/env bash
# A PostgreSQL 15 + pgvector server behind PgBouncer in transaction pooling mode, for the
# connection-pooler tests. Needs the pgvector that ../shared/citus/citus-cluster.sh builds for
# Debian's PostgreSQL 15; run that first. Prints the DSN to export as MRL_PG_PGBOUNCER_DSN.
# Idempotent: a running server or pooler is left as it is. Run as root.
set -euo pipefail

LAB=${LAB:-/var/tmp/mrl_pg-pgbouncer}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${PG_PORT:-9710}
POOL_PORT=${POOL_PORT:-6432}
OSUSER=postgres
as_pg() { runuser -u "$OSUSER" -- "$@"; }

if ! command -v pgbouncer >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
fi
mkdir -p "$LAB"
chown "$OSUSER:$OSUSER" "$LAB"

if [ ! -f "$LAB/data/PG_VERSION" ]; then
  as_pg "$PGBIN/initdb" -D "$LAB/data" -U postgres --auth=trust >/dev/null
  cat >> "$LAB/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$LAB'
max_connections = 100
maintenance_work_mem = '512MB'
CONF
fi
if ! as_pg "$PGBIN/pg_ctl" -D "$LAB/data" status >/dev/null 2>&1; then
  as_pg "$PGBIN/pg_ctl" -D "$LAB/data" -l "$LAB/postgres.log" -w start >/dev/null
fi
as_pg "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -d postgres \
  -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null

cat > "$LAB/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOL_PORT
unix_socket_dir =
auth_type = trust
auth_file = $LAB/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = $LAB/pgbouncer.log
pidfile = $LAB/pgbouncer.pid
INI
echo '"postgres" ""' > "$LAB/userlist.txt"
chown "$OSUSER:$OSUSER" "$LAB/pgbouncer.ini" "$LAB/userlist.txt"
if ! { [ -f "$LAB/pgbouncer.pid" ] && kill -0 "$(cat "$LAB/pgbouncer.pid")" 2>/dev/null; }; then
  as_pg pgbouncer -d "$LAB/pgbouncer.ini"
fi
for _ in $(seq 50); do
  as_pg "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$POOL_PORT" -d postgres -c "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "postgresql://postgres@127.0.0.1:$POOL_PORT/postgres"
