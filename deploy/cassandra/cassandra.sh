#!/usr/bin/env bash
# One Apache Cassandra 5.0 node for the store tests, from Maven Central's jars, on Java 17, as any
# user (root included: the daemon is started with `java` directly, not the `bin/cassandra` script).
#
#   cassandra.sh install      copies cassandra-all and its dependencies (version: pom.xml beside
#                             this file) into the jar cache, once; installs OpenJDK 17 and Maven
#                             from the OS packages (Debian/Ubuntu) when missing
#   cassandra.sh start DIR    writes DIR/cassandra.yaml (free ports on 127.0.0.1) and a test CA and
#                             node certificate (DIR/tls/ca.pem: the node takes TLS and plain
#                             connections on the same port), starts the node in the background
#                             (DIR/cassandra.log, DIR/cassandra.pid), waits until it answers CQL,
#                             and prints `127.0.0.1:<native port>` as its last line
#   cassandra.sh stop DIR     SIGTERM, SIGKILL after CASSANDRA_STOP_TIMEOUT s; waits for the exit
#
# Environment: CASSANDRA_CACHE (jar cache; default ${XDG_CACHE_HOME:-$HOME/.cache}/chat/cassandra-<version>),
# CASSANDRA_JAVA (a Java 17 `java`), CASSANDRA_HEAP (max heap, default 1g),
# CASSANDRA_START_TIMEOUT (s, default 180), CASSANDRA_STOP_TIMEOUT (s, default 60).
# Progress goes to stderr; stdout has only what a caller reads.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$here/pom.xml")"
[ -n "$version" ] || { echo "cassandra.sh: no <cassandra.version> in $here/pom.xml" >&2; exit 1; }
cache="${CASSANDRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chat/cassandra-$version}"

say() { echo "cassandra: $*" >&2; }
die() { echo "cassandra: error: $*" >&2; exit 1; }

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || die "cannot install $* (no apt-get): install it by hand"
  say "installing $* from the OS packages"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The major version of a `java` binary, from its JDK's `release` file (no JVM start), else from
# `java -version`.
java_major() {
  local java="$1" home rel v
  home="$(dirname "$(dirname "$(readlink -f "$java")")")"
  rel="$home/release"
  if [ -f "$rel" ]; then
    v="$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$rel")"
  else
    v="$("$java" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p')"
  fi
  echo "${v:-0}"
}

# Cassandra 5.0 runs on Java 11 or 17; its flags here are Java 17's, and Java 24+ fails
# (Cassandra calls System.setSecurityManager). So: Java 17 only.
find_java() {
  local j
  for j in "${CASSANDRA_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" \
           /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*-17-*/bin/java /usr/lib/jvm/*17*/bin/java; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    if [ "$(java_major "$j")" = 17 ]; then echo "$j"; return 0; fi
  done
  return 1
}

installed() { [ -f "$cache/.complete" ]; }

cmd_install() {
  if ! find_java >/dev/null; then
    apt_install openjdk-17-jre-headless
    find_java >/dev/null || die "no Java 17 after installing openjdk-17-jre-headless (Cassandra 5.0 needs Java 17; 24+ does not work)"
  fi
  if installed; then
    say "Cassandra $version jars are cached in $cache"
    return 0
  fi
  command -v mvn >/dev/null || apt_install maven
  say "copying cassandra-all $version and its dependencies into $cache (Maven Central)"
  mkdir -p "$(dirname "$cache")"
  [ -e "$cache" ] && rm -rf "$cache"  # an incomplete copy (a finished one has .complete)
  local tmp="$cache.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1; then
    tail -n 30 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies of cassandra-all $version failed"
  fi
  compgen -G "$tmp/lib/cassandra-all-$version.jar" >/dev/null && compgen -G "$tmp/lib/jamm-*.jar" >/dev/null \
    || { rm -rf "$tmp"; die "the copied jars lack cassandra-all-$version.jar or jamm"; }
  rm -f "$tmp/mvn.log"
  touch "$tmp/.complete"
  # Atomic: a concurrent install that got there first wins, this copy is dropped.
  mv -T "$tmp" "$cache" 2>/dev/null || rm -rf "$tmp"
  installed || die "could not move the jars into $cache"
  say "cached $(du -sh "$cache" | cut -f1) in $cache"
}

# N free TCP ports on 127.0.0.1, held together while chosen so that they differ.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# True when 127.0.0.1:$1 answers a CQL OPTIONS request (protocol v4) with SUPPORTED.
cql_answers() {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.sendall(bytes([0x04, 0, 0, 0, 0x05, 0, 0, 0, 0]))  # v4 request, stream 0, OPTIONS, empty body
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    sys.exit(0 if head[0] == 0x84 and head[4] == 0x06 else 1)  # v4 response, SUPPORTED
except Exception:
    sys.exit(1)
EOF
}

# Alive and not a zombie.
alive() {
  local pid="$1" state
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo "?")"
  [ "$state" != "Z" ]
}

# A throwaway CA (DIR/tls/ca.pem) and a node certificate it signs for 127.0.0.1 (an IP address
# SAN: the drivers verify nodes by address), in the PKCS12 keystore DIR/tls/node.p12.
make_tls() {
  local dir="$1" java="$2" kt pw=chat-test-tls
  kt="$(dirname "$(readlink -f "$java")")/keytool"
  [ -x "$kt" ] || die "no keytool beside $java"
  rm -rf "$dir/tls"
  mkdir -p "$dir/tls"
  (
    cd "$dir/tls"
    local ec=(-keyalg EC -groupname secp256r1 -validity 30 -storetype PKCS12 -storepass "$pw")
    "$kt" -genkeypair -alias ca "${ec[@]}" -dname "CN=chat test CA" -ext bc:c -keystore ca.p12
    "$kt" -exportcert -rfc -alias ca -keystore ca.p12 -storepass "$pw" >ca.pem
    "$kt" -genkeypair -alias node "${ec[@]}" -dname "CN=127.0.0.1" -keystore node.p12
    "$kt" -certreq -alias node -keystore node.p12 -storepass "$pw" \
      | "$kt" -gencert -alias ca -keystore ca.p12 -storepass "$pw" -rfc -validity 30 \
          -ext san=ip:127.0.0.1 -ext eku=serverAuth >node.pem
    "$kt" -importcert -noprompt -alias ca -file ca.pem -keystore node.p12 -storepass "$pw"
    "$kt" -importcert -alias node -file node.pem -keystore node.p12 -storepass "$pw"
  ) >"$dir/tls/keytool.log" 2>&1 || { cat "$dir/tls/keytool.log" >&2; die "keytool failed"; }
}

write_config() {
  local dir="$1" native="$2" storage="$3"
  cat >"$dir/cassandra.yaml" <<EOF
# Written by deploy/cassandra/cassandra.sh: one node for tests, on 127.0.0.1.
cluster_name: chat-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $native
start_native_transport: true
auto_bootstrap: false
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
data_file_directories:
  - $dir/data/data
commitlog_directory: $dir/data/commitlog
saved_caches_directory: $dir/data/saved_caches
hints_directory: $dir/data/hints
cdc_raw_directory: $dir/data/cdc_raw
# A new cluster: no sstable or TTL compatibility with Cassandra 4 needed.
storage_compatibility_mode: NONE
# Tests drop and truncate often: no snapshot each time.
auto_snapshot: false
materialized_views_enabled: false
sasi_indexes_enabled: false
hinted_handoff_enabled: false
# Generous timeouts: the test machine is small and busy with the tests themselves.
read_request_timeout: 10000ms
range_request_timeout: 20000ms
write_request_timeout: 10000ms
counter_write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
truncate_request_timeout: 60000ms
request_timeout: 20000ms
# TLS and plain connections on the one CQL port (the TLS tests verify the node with tls/ca.pem).
client_encryption_options:
  enabled: true
  optional: true
  keystore: $dir/tls/node.p12
  keystore_password: chat-test-tls
  store_type: PKCS12
EOF
  cat >"$dir/logback.xml" <<'EOF'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
}

# The JVM's flags: Java 17's module opens and exports from Cassandra's conf/jvm17-server.options,
# a few of conf/jvm-server.options, a small heap, and what starting without bin/cassandra needs.
jvm_flags() {
  local dir="$1" lib="$2" jamm
  jamm="$(compgen -G "$lib/jamm-*.jar" | head -n 1)"
  flags=(
    -Xss256k "-Xms256m" "-Xmx${CASSANDRA_HEAP:-1g}"
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxGCPauseMillis=300
    -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError "-XX:ErrorFile=$dir/hs_err_pid%p.log"
    -Djava.net.preferIPv4Stack=true
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    "-javaagent:$jamm"
    -Dcassandra-foreground=yes
    "-Dcassandra.config=file://$dir/cassandra.yaml"
    "-Dcassandra.storagedir=$dir/data"
    "-Dcassandra.logdir=$dir/logs"
    "-Dcassandra.triggers_dir=$dir/triggers"
    "-Dlogback.configurationFile=file://$dir/logback.xml"
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.superuser_setup_delay_ms=0
    # A single node: nobody to tell of its shutdown (saves 2 s, and 2 more waiting for messaging).
    -Dcassandra.shutdown_announce_in_ms=0
    -Dcassandra.test.messagingService.nonGracefulShutdown=true
    # No -Dcassandra.jmx.local.port: JMX stays off (nothing here uses nodetool).
    -cp "$lib/*"
    org.apache.cassandra.service.CassandraDaemon
  )
}

cmd_start() {
  [ $# -eq 1 ] || die "usage: cassandra.sh start DIR"
  mkdir -p "$1"
  local dir; dir="$(cd "$1" && pwd)"
  if [ -f "$dir/cassandra.pid" ] && alive "$(cat "$dir/cassandra.pid")"; then
    die "a node already runs from $dir (pid $(cat "$dir/cassandra.pid")): stop it first"
  fi
  local java; java="$(find_java)" || die "no Java 17 found (Cassandra 5.0 needs it; 24+ does not work): run '$0 install'"
  installed || die "the Cassandra $version jars are not in $cache: run '$0 install'"
  command -v python3 >/dev/null || die "python3 is needed to pick free ports"
  local lib="$cache/lib" timeout="${CASSANDRA_START_TIMEOUT:-180}"
  local attempt native storage pid began
  began="$(date +%s)"
  make_tls "$dir" "$java"
  for attempt in 1 2 3; do
    read -r native storage <<<"$(free_ports 2)"
    mkdir -p "$dir/data" "$dir/logs" "$dir/triggers"
    write_config "$dir" "$native" "$storage"
    jvm_flags "$dir" "$lib"
    printf '%q ' "$java" "${flags[@]}" >"$dir/command.txt"; echo >>"$dir/command.txt"
    say "starting Cassandra $version ($java) in $dir, CQL on 127.0.0.1:$native, storage port $storage"
    "$java" "${flags[@]}" </dev/null >"$dir/cassandra.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/cassandra.pid"
    echo "$native" >"$dir/native_port"
    local deadline=$(( $(date +%s) + timeout ))
    while :; do
      if ! alive "$pid"; then
        local status=0; wait "$pid" || status=$?
        rm -f "$dir/cassandra.pid"
        if grep -q -i "address already in use" "$dir/cassandra.log" && [ "$attempt" -lt 3 ]; then
          say "a chosen port was taken meanwhile; trying other ports"
          continue 2
        fi
        tail -n 40 "$dir/cassandra.log" >&2
        die "Cassandra exited during startup (exit status $status); full log: $dir/cassandra.log"
      fi
      if grep -q "Starting listening for CQL clients" "$dir/cassandra.log" && cql_answers "$native"; then
        break 2
      fi
      if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 40 "$dir/cassandra.log" >&2
        cmd_stop "$dir" >&2 || true
        die "Cassandra did not answer CQL on 127.0.0.1:$native within ${timeout}s; full log: $dir/cassandra.log"
      fi
      sleep 0.5
    done
  done
  say "Cassandra $version answers CQL on 127.0.0.1:$native (pid $pid, $(( $(date +%s) - began ))s)"
  echo "127.0.0.1:$native"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: cassandra.sh stop DIR"
  local dir="$1" pid i timeout="${CASSANDRA_STOP_TIMEOUT:-60}"
  if [ ! -f "$dir/cassandra.pid" ]; then
    say "no node runs from $dir (no cassandra.pid)"
    return 0
  fi
  pid="$(cat "$dir/cassandra.pid")"
  if alive "$pid" && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon; then
    say "pid $pid from $dir/cassandra.pid is not a Cassandra node; leaving it alone"
    rm -f "$dir/cassandra.pid"
    return 0
  fi
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 5; i++)); do
      alive "$pid" || break
      sleep 0.2
    done
    if alive "$pid"; then
      say "pid $pid still running ${timeout}s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.2
      done
      alive "$pid" && die "pid $pid survived SIGKILL"
    fi
    say "stopped the node of $dir (pid $pid)"
  fi
  rm -f "$dir/cassandra.pid"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
