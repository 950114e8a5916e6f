#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine for the cluster and broker-restart tests
# (tests/tests/cluster_rabbit.rs), next to the machine's own node on 5672, which it never
# touches: the extra nodes have their own node names, ports, data, logs, config and Erlang
# cookie (a cookie of their own, so no Erlang distribution link to the 5672 node is possible).
#
#   scripts/rabbit-cluster.sh start    start the nodes and cluster them (idempotent)
#   scripts/rabbit-cluster.sh stop     stop the nodes and remove their folders (idempotent)
#   scripts/rabbit-cluster.sh status   exit 0 when all three run as one cluster
#   scripts/rabbit-cluster.sh url      print the transport URL naming the three nodes
#   scripts/rabbit-cluster.sh ctl N ARGS...   rabbitmqctl against node N (1..3)
#
# Nodes: oslo-c1@localhost .. oslo-c3@localhost, AMQP on 127.0.0.1:5673..5675, Erlang
# distribution on 25673..25675. Folder: $OSLO_RABBIT_CLUSTER_DIR (default
# /tmp/oslo-rabbit-cluster). Needs root (the nodes run as the `rabbitmq` user) and Debian's
# RabbitMQ (/usr/lib/rabbitmq/bin). Every wait is bounded; a failure names the step and why.
set -euo pipefail

DIR=${OSLO_RABBIT_CLUSTER_DIR:-/tmp/oslo-rabbit-cluster}
BASE_PORT=${OSLO_RABBIT_CLUSTER_BASE_PORT:-5673}
NODES=(1 2 3)
RMQ_BIN=/usr/lib/rabbitmq/bin
RUN_AS=rabbitmq
# Bounds (seconds).
BOOT_TIMEOUT=${OSLO_RABBIT_CLUSTER_BOOT_TIMEOUT:-90}
CTL_TIMEOUT=60
STOP_TIMEOUT=30

node_name() { echo "oslo-c$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }
dist_port() { echo $((BASE_PORT + $1 - 1 + 20000)); }
node_dir() { echo "$DIR/c$1"; }

say() { echo "rabbit-cluster: $*"; }
fail() {
  echo "rabbit-cluster: FAILED at step '$1': $2" >&2
  exit 1
}

# rabbitmqctl as the rabbitmq user with the cluster's cookie ($DIR/.erlang.cookie via HOME).
ctl() {
  local n=$1
  shift
  timeout "$CTL_TIMEOUT" runuser -u "$RUN_AS" -- env HOME="$DIR" "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Pid of node n's Erlang VM: a beam.smp of the rabbitmq user started with this node's
# RABBITMQ_NODENAME (RabbitMQ 3.10 names the node at runtime, not on the command line).
node_pids() {
  local want="RABBITMQ_NODENAME=$(node_name "$1")" pid
  for pid in $(pgrep -u "$RUN_AS" -x beam.smp || true); do
    if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qx -- "$want"; then
      echo "$pid"
    fi
  done
}

preflight() {
  [ "$(id -u)" = 0 ] || fail preflight "must run as root (the nodes run as the '$RUN_AS' user via runuser)"
  [ -x "$RMQ_BIN/rabbitmq-server" ] || fail preflight "$RMQ_BIN/rabbitmq-server not found (Debian's rabbitmq-server package)"
  id "$RUN_AS" >/dev/null 2>&1 || fail preflight "no '$RUN_AS' user"
  command -v runuser >/dev/null || fail preflight "runuser not found (util-linux)"
  command -v timeout >/dev/null || fail preflight "timeout not found (coreutils)"
}

cluster_ok() {
  local out
  for n in "${NODES[@]}"; do
    port_open "$(amqp_port "$n")" || return 1
  done
  out=$(ctl 1 cluster_status --formatter json 2>/dev/null) || return 1
  for n in "${NODES[@]}"; do
    # running_nodes lists every node of the cluster that is up.
    echo "$out" | grep -q "\"running_nodes\":\[[^]]*\"$(node_name "$n")\"" || return 1
  done
}

start_node() {
  local n=$1 dir port dport
  dir=$(node_dir "$n")
  port=$(amqp_port "$n")
  dport=$(dist_port "$n")
  mkdir -p "$dir/mnesia" "$dir/log"
  # Own config: /etc/rabbitmq/rabbitmq.conf pins the listener to 5672, which belongs to the
  # machine's node; an empty env file keeps /etc/rabbitmq/rabbitmq-env.conf's NODENAME out.
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users.guest = true
EOF
  : >"$dir/rabbitmq-env.conf"
  echo "[]." >"$dir/enabled_plugins"
  chown -R "$RUN_AS:$RUN_AS" "$dir"
  (
    cd "$dir"
    runuser -u "$RUN_AS" -- env \
      HOME="$DIR" \
      RABBITMQ_NODENAME="$(node_name "$n")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$port" \
      RABBITMQ_DIST_PORT="$dport" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" \
      RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
      RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_PID_FILE="$dir/node.pid" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      "$RMQ_BIN/rabbitmq-server" -detached >"$dir/log/startup.out" 2>&1
  ) || fail "start node $n" "rabbitmq-server -detached exited with an error: $(tail -5 "$dir/log/startup.out" 2>/dev/null)"
}

wait_node() {
  local n=$1 dir
  dir=$(node_dir "$n")
  local deadline=$((SECONDS + BOOT_TIMEOUT))
  until ctl "$n" await_startup --timeout 10 >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "--- last lines of $(node_name "$n")'s log:" >&2
      tail -20 "$dir"/log/*.log "$dir/log/startup.out" 2>/dev/null >&2 || true
      fail "boot node $n" "$(node_name "$n") did not finish booting within ${BOOT_TIMEOUT}s (log above, folder $dir/log)"
    fi
    sleep 1
  done
}

cmd_start() {
  preflight
  if cluster_ok; then
    say "already running: $(cmd_url)"
    return 0
  fi
  # Half-started leftovers from an earlier run: start from scratch.
  if [ -d "$DIR" ]; then
    say "removing leftovers of an earlier run in $DIR"
    cmd_stop >/dev/null
  fi
  local started=$SECONDS
  # Every port free before anything starts (the 5672 node's 5672 and 25672 included).
  for n in "${NODES[@]}"; do
    port_open "$(amqp_port "$n")" && fail "check ports" "AMQP port $(amqp_port "$n") for $(node_name "$n") is already in use by another program"
    port_open "$(dist_port "$n")" && fail "check ports" "distribution port $(dist_port "$n") for $(node_name "$n") is already in use by another program"
    [ -z "$(node_pids "$n")" ] || fail "check ports" "an Erlang VM named $(node_name "$n") is still running (pid $(node_pids "$n"))"
  done
  mkdir -p "$DIR"
  # One cookie for the three nodes (and the CLI), different from the 5672 node's.
  head -c 64 /dev/urandom | tr -dc 'A-Z' | head -c 20 >"$DIR/.erlang.cookie"
  [ -s "$DIR/.erlang.cookie" ] || fail "cookie" "could not write $DIR/.erlang.cookie"
  chown "$RUN_AS:$RUN_AS" "$DIR" "$DIR/.erlang.cookie"
  chmod 400 "$DIR/.erlang.cookie"
  for n in "${NODES[@]}"; do
    start_node "$n"
  done
  for n in "${NODES[@]}"; do
    wait_node "$n"
    say "$(node_name "$n") is up on 127.0.0.1:$(amqp_port "$n") ($((SECONDS - started))s)"
  done
  for n in "${NODES[@]:1}"; do
    for step in stop_app "join_cluster $(node_name 1)" start_app; do
      # shellcheck disable=SC2086 # the step is a command and its argument
      ctl "$n" $step >"$DIR/ctl.out" 2>&1 || fail "join node $n" "rabbitmqctl $step on $(node_name "$n") failed: $(tail -5 "$DIR/ctl.out")"
    done
    wait_node "$n"
  done
  local deadline=$((SECONDS + 30))
  until cluster_ok; do
    [ $SECONDS -ge $deadline ] || { sleep 1; continue; }
    fail "verify" "the nodes do not report one running 3-node cluster: $(ctl 1 cluster_status 2>&1 | tail -20)"
  done
  say "3-node cluster running in $((SECONDS - started))s: $(cmd_url)"
}

cmd_stop() {
  preflight
  for n in "${NODES[@]}"; do
    local pids
    pids=$(node_pids "$n")
    [ -n "$pids" ] || continue
    # `rabbitmqctl stop` ends the whole VM; kill what is left after the bound.
    ctl "$n" stop >/dev/null 2>&1 || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while [ -n "$(node_pids "$n")" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    pids=$(node_pids "$n")
    if [ -n "$pids" ]; then
      say "$(node_name "$n") did not stop within ${STOP_TIMEOUT}s; killing $pids"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.5
    fi
    [ -z "$(node_pids "$n")" ] || fail "stop node $n" "$(node_name "$n") (pids $(node_pids "$n")) survived SIGKILL"
    say "$(node_name "$n") stopped"
  done
  # Each node's Erlang port mapper registration goes with its VM; epmd itself is shared with
  # the 5672 node and stays.
  case "$DIR" in
    /tmp/* | /var/tmp/* | "${OSLO_RABBIT_CLUSTER_DIR:-/nonexistent}") rm -rf "$DIR" ;;
    *) fail "remove folder" "refusing to remove $DIR (not under /tmp and not OSLO_RABBIT_CLUSTER_DIR)" ;;
  esac
  say "stopped, $DIR removed"
}

cmd_status() {
  preflight
  local all=0
  for n in "${NODES[@]}"; do
    if port_open "$(amqp_port "$n")"; then
      say "$(node_name "$n"): listening on 127.0.0.1:$(amqp_port "$n")"
    else
      say "$(node_name "$n"): not listening on 127.0.0.1:$(amqp_port "$n")"
      all=1
    fi
  done
  if [ $all = 0 ] && cluster_ok; then
    say "one running 3-node cluster: $(cmd_url)"
    return 0
  fi
  say "not a running 3-node cluster"
  return 1
}

cmd_url() {
  local hosts=()
  for n in "${NODES[@]}"; do hosts+=("guest:guest@127.0.0.1:$(amqp_port "$n")"); done
  local IFS=,
  echo "rabbit://${hosts[*]}/"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) cmd_url ;;
  ctl)
    shift
    case "${1:-}" in
      1 | 2 | 3) ;;
      *) fail ctl "usage: $0 ctl N ARGS... with N the node (1, 2 or 3)" ;;
    esac
    ctl "$@"
    ;;
  *)
    echo "usage: $0 start|stop|status|url|ctl N ARGS..." >&2
    exit 2
    ;;
esac
