#!/usr/bin/env bash
# A single-node OpenSearch with k-NN on 127.0.0.1, built from Maven Central artifacts (no Docker needed).
#
#   scripts/opensearch.sh start [--port N] [--run-dir DIR]   → last line: OPENSEARCH_URL=http://127.0.0.1:PORT
#                                                              (DIR keeps the node's data across stop and start)
#   scripts/opensearch.sh stop  [--run-dir DIR]
#   scripts/opensearch.sh status [--run-dir DIR]
#
# The distribution is downloaded once (checked against Maven's SHA-1) and assembled under the cache folder:
# OpenSearch's integ-test zip, the k-NN plugin, and the lang-painless and reindex modules put together from their
# jars (the integ-test zip carries none; k-NN extends lang-painless, and `imgvec migrate` uses _reindex).
# The k-NN zip on Maven has no native libraries: only the `lucene` engine works on this node (docs/opensearch.md).
# OpenSearch refuses to run as root; as root the node runs as the system user imgvec-opensearch.
set -euo pipefail

VERSION="${IMGVEC_OPENSEARCH_VERSION:-2.19.1}"
MAVEN="${IMGVEC_MAVEN_URL:-https://repo1.maven.org/maven2}"
NODE_USER=imgvec-opensearch
if [ "$(id -u)" = 0 ]; then CACHE_DEFAULT=/var/cache/imgvec/opensearch; else CACHE_DEFAULT="$HOME/.cache/imgvec/opensearch"; fi
CACHE="${IMGVEC_OPENSEARCH_CACHE:-$CACHE_DEFAULT}"
RUN_DIR="${IMGVEC_OPENSEARCH_RUN:-/tmp/imgvec-opensearch}"
PORT=""
HEAP="${IMGVEC_OPENSEARCH_HEAP:-768m}"
WAIT_SECONDS="${IMGVEC_OPENSEARCH_WAIT:-180}"

die() { echo "opensearch.sh: $*" >&2; exit 1; }

command_name="${1:-}"; [ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --run-dir) RUN_DIR="$2"; shift 2 ;;
    *) die "unknown option $1 (use: start|stop|status [--port N] [--run-dir DIR])" ;;
  esac
done

ensure_tool() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } >&2 || die "could not install $1"
  else
    die "$1 is needed to download and unpack OpenSearch: install it"
  fi
}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }

ensure_java() {
  if [ -z "${JAVA_HOME:-}" ] && command -v java >/dev/null && [ "$(java_major)" -ge 17 ] 2>/dev/null; then
    JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"
  fi
  if [ -z "${JAVA_HOME:-}" ] || [ ! -x "$JAVA_HOME/bin/java" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Java 17 (openjdk-17-jre-headless)" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; } >&2 \
        || die "no Java 17+ and apt-get could not install openjdk-17-jre-headless"
      JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"
    else
      die "OpenSearch $VERSION needs Java 17 or newer: install openjdk-17-jre-headless (or set JAVA_HOME)"
    fi
  fi
  export JAVA_HOME
}

fetch() {  # fetch GROUP_PATH ARTIFACT VERSION EXT → path of the verified file in the cache
  local group="$1" artifact="$2" version="$3" ext="$4"
  local file="$CACHE/downloads/$artifact-$version.$ext"
  local url="$MAVEN/$group/$artifact/$version/$artifact-$version.$ext"
  if [ ! -f "$file" ]; then
    mkdir -p "$CACHE/downloads"
    curl -fsSL --retry 3 -o "$file.part" "$url" || { rm -f "$file.part"; die "download failed: $url"; }
    local expected actual
    expected="$(curl -fsSL --retry 3 "$url.sha1" | cut -c1-40)" || die "download failed: $url.sha1"
    actual="$(sha1sum "$file.part" | cut -c1-40)"
    [ "$expected" = "$actual" ] || { rm -f "$file.part"; die "checksum mismatch for $url"; }
    mv "$file.part" "$file"
  fi
  echo "$file"
}

module_from_jars() {  # module_from_jars NAME CLASSNAME POLICY JAR...
  local name="$1" classname="$2" policy="$3"; shift 3
  local dir="$HOME_DIR/modules/$name"
  mkdir -p "$dir"
  cp "$@" "$dir/"
  cat > "$dir/plugin-descriptor.properties" <<EOF
description=$name, assembled by imgvec from its Maven Central jars
version=$VERSION
name=$name
classname=$classname
java.version=11
opensearch.version=$VERSION
extended.plugins=
has.native.controller=false
EOF
  printf '%s\n' "$policy" > "$dir/plugin-security.policy"
}

assemble() {
  HOME_DIR="$CACHE/opensearch-$VERSION"
  [ -f "$HOME_DIR/.imgvec-assembled" ] && return
  local os="org/opensearch" work="$CACHE/assemble.$$"
  rm -rf "$work" "$HOME_DIR"; mkdir -p "$work"
  unzip -q "$(fetch "$os/distribution/integ-test-zip" opensearch "$VERSION" zip)" -d "$work"
  mv "$work/opensearch-$VERSION" "$HOME_DIR"
  rmdir "$work"
  local painless=(
    "$(fetch "$os/plugin" lang-painless "$VERSION" jar)"
    "$(fetch "$os/plugin" opensearch-scripting-painless-spi "$VERSION" jar)"
    "$(fetch org/antlr antlr4-runtime 4.13.1 jar)"
  )
  for asm in asm asm-util asm-tree asm-commons asm-analysis; do painless+=("$(fetch org/ow2/asm "$asm" 9.7 jar)"); done
  module_from_jars lang-painless org.opensearch.painless.PainlessPlugin \
    'grant { permission java.lang.RuntimePermission "createClassLoader"; permission java.lang.RuntimePermission "getClassLoader"; };' \
    "${painless[@]}"
  local reindex=(
    "$(fetch "$os/plugin" reindex-client "$VERSION" jar)"
    "$(fetch "$os/client" opensearch-rest-client "$VERSION" jar)"
    "$(fetch "$os" opensearch-ssl-config "$VERSION" jar)"
    "$(fetch org/apache/httpcomponents httpclient 4.5.14 jar)"
    "$(fetch org/apache/httpcomponents httpcore 4.4.16 jar)"
    "$(fetch org/apache/httpcomponents httpasyncclient 4.1.5 jar)"
    "$(fetch org/apache/httpcomponents httpcore-nio 4.4.16 jar)"
    "$(fetch commons-codec commons-codec 1.16.1 jar)"
    "$(fetch commons-logging commons-logging 1.2 jar)"
  )
  module_from_jars reindex org.opensearch.index.reindex.ReindexPlugin \
    'grant { permission java.net.SocketPermission "*", "connect"; };' "${reindex[@]}"
  mkdir -p "$HOME_DIR/plugins/opensearch-knn"
  unzip -q "$(fetch "$os/plugin" opensearch-knn "$VERSION.0" zip)" -d "$HOME_DIR/plugins/opensearch-knn"
  chmod -R a+rX "$HOME_DIR"
  touch "$HOME_DIR/.imgvec-assembled"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

health() { curl -fsS --max-time 5 "http://127.0.0.1:$1/_cluster/health" 2>/dev/null; }

running_pid() {
  [ -f "$RUN_DIR/pid" ] || return 1
  local pid; pid="$(cat "$RUN_DIR/pid")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  if pid="$(running_pid)"; then
    echo "already running (pid $pid)" >&2
    echo "OPENSEARCH_URL=http://127.0.0.1:$(cat "$RUN_DIR/port")"
    return
  fi
  ensure_tool curl
  ensure_tool unzip
  ensure_java
  assemble
  [ -n "$PORT" ] || PORT="$(free_port)"
  port_taken "$PORT" && die "port $PORT is taken: pick another with --port"
  local transport; transport="$(free_port)"
  # data/ survives a stop and start in the same run folder, as a node's data would; the config is written anew
  mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
  rm -rf "$RUN_DIR/config"
  cp -r "$HOME_DIR/config" "$RUN_DIR/config"
  cat > "$RUN_DIR/config/opensearch.yml" <<EOF
cluster.name: imgvec-test
node.name: imgvec-test
network.host: 127.0.0.1
http.port: $PORT
transport.port: $transport
discovery.type: single-node
path.data: $RUN_DIR/data
path.logs: $RUN_DIR/logs
node.store.allow_mmap: false
cluster.routing.allocation.disk.threshold_enabled: false
EOF
  printf -- '-Xms%s\n-Xmx%s\n' "$HEAP" "$HEAP" > "$RUN_DIR/config/jvm.options.d/heap.options"
  # jvm.options names its GC log, error file and heap dumps relative to the home folder, which the node does not own
  sed -i "s|logs/|$RUN_DIR/logs/|g; s|HeapDumpPath=data|HeapDumpPath=$RUN_DIR/data|" "$RUN_DIR/config/jvm.options"
  echo "$PORT" > "$RUN_DIR/port"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    id "$NODE_USER" >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin "$NODE_USER"
    chown -R "$NODE_USER" "$RUN_DIR"
    # a run folder under a private one (a `mktemp -d`, root's home) cannot be entered by the node's user: the JVM
    # then dies with a trace in a log nobody looks at
    runuser -u "$NODE_USER" -- test -w "$RUN_DIR/data" -a -x "$RUN_DIR/config" \
      || die "--run-dir $RUN_DIR: the node runs as $NODE_USER, which cannot enter it (a folder above it is private to root, e.g. a mktemp -d): use a run dir under a folder others can enter, such as /tmp/imgvec-opensearch-NAME"
    as=(runuser -u "$NODE_USER" --)
  fi
  # setsid: the node outlives the shell that started it; stop() ends it.
  (cd "$RUN_DIR" && exec setsid "${as[@]}" env JAVA_HOME="$JAVA_HOME" OPENSEARCH_PATH_CONF="$RUN_DIR/config" \
    "$HOME_DIR/bin/opensearch" > "$RUN_DIR/logs/stdout.log" 2>&1 < /dev/null) &
  echo $! > "$RUN_DIR/pid"
  local waited=0
  until health "$PORT" | grep -q '"status":"\(green\|yellow\)"'; do
    if ! running_pid >/dev/null; then
      die "the node exited while starting: see $RUN_DIR/logs/stdout.log and $RUN_DIR/logs/imgvec-test.log"
    fi
    [ "$waited" -ge "$WAIT_SECONDS" ] && { stop >/dev/null 2>&1; die "the node did not become healthy within ${WAIT_SECONDS}s: see $RUN_DIR/logs/imgvec-test.log"; }
    sleep 1; waited=$((waited + 1))
  done
  echo "OpenSearch $VERSION with k-NN on 127.0.0.1:$PORT (logs: $RUN_DIR/logs; stop: $0 stop --run-dir $RUN_DIR)" >&2
  echo "OPENSEARCH_URL=http://127.0.0.1:$PORT"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then echo "not running" >&2; return 0; fi
  # setsid made the launcher a process-group leader: the group holds the JVM too
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$RUN_DIR/pid"
  echo "stopped" >&2
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "running (pid $pid) on 127.0.0.1:$(cat "$RUN_DIR/port"): $(health "$(cat "$RUN_DIR/port")" || echo 'not answering')"
  else
    echo "not running"; return 3
  fi
}

case "$command_name" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status [--port N] [--run-dir DIR]" ;;
esac
