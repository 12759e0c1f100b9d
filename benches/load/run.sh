#!/usr/bin/env bash
# The load benchmark: NGINX, NGINX + ModSecurity v3 + CRS, and Portcullis (plain proxy, full
# stack, full stack without the verified-token cache), on one upstream, side by side.
#
#   benches/load/run.sh                 # 3 rounds of 10 s per configuration and request
#   ROUNDS=5 DURATION=20 benches/load/run.sh
#   benches/load/run.sh --smoke         # 1 round of 1 s: checks the harness end to end
#
# Environment: CRS (default ../shared/crs beside the repository), ROUNDS, DURATION (s),
# CONNECTIONS, THREADS (wrk), TIMEOUT (s: wrk counts a request slower than this as failed, and
# a run with failed requests is left out; NGINX + ModSecurity + CRS answers some POSTs in over
# wrk's default 2 s when saturated), SERVER_CPU / CLIENT_CPU (the cores the server and the load
# generator are pinned to; the upstream shares the load generator's core), OUT (where the
# results go; default a temporary directory).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CRS=${CRS:-$ROOT/../shared/crs}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
TIMEOUT=${TIMEOUT:-10}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
WARMUP=2
if [[ "${1:-}" == "--smoke" ]]; then
    ROUNDS=1 DURATION=1 WARMUP=1
fi
[[ -f "$CRS/crs-setup.conf.example" ]] || { echo "no CRS at $CRS (set CRS=DIR)" >&2; exit 64; }
CRS=$(cd "$CRS" && pwd)

WORK=$(mktemp -d -t portcullis-load.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# --- tools -----------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ]] || missing+=(libnginx-mod-http-modsecurity)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    echo "installing ${missing[*]}" >&2
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "building the release binaries" >&2
(cd "$ROOT" && cargo build --release -q -p portcullis-ingress --bin portcullis --example load_kit)
BIN=$ROOT/target/release/portcullis
KIT=$ROOT/target/release/examples/load_kit

free_port() { # a port nothing listens on, below the kernel's ephemeral range (a client
    # socket of an earlier run may hold a port in that range without listening on it)
    local p low=32768
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    ((low > 11000)) || low=32768
    while :; do
        p=$((10000 + RANDOM % (low - 10000)))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
wait_for() { # url, seconds
    for _ in $(seq 1 $(($2 * 10))); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "nothing answered $1" >&2
    return 1
}

# --- the upstream and the fixtures -----------------------------------------------------------
UP_PORT=$(free_port)
taskset -c "$CLIENT_CPU" "$KIT" upstream "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_for "http://127.0.0.1:$UP_PORT/" 10
"$KIT" fixtures "$WORK" "$UP_PORT" "$CRS"
TOKEN=$(cat "$WORK/token")

# --- ModSecurity + CRS, as its users install it ------------------------------------------------
mkdir -p "$WORK/modsec" "$WORK/nginx-tmp"
chmod -R a+rwX "$WORK/nginx-tmp"
chmod a+rx "$WORK" "$WORK/modsec"
cp "$CRS/crs-setup.conf.example" "$WORK/modsec/crs-setup.conf"
cat > "$WORK/modsec/main.conf" <<CONF
# ModSecurity's recommended base configuration (blocking), then CRS at paranoia level 1.
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecRequestBodyJsonDepthLimit 512
SecArgumentsLimit 1000
SecPcreMatchLimit 1000
SecPcreMatchLimitRecursion 1000
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html text/xml
SecResponseBodyLimit 524288
SecResponseBodyLimitAction ProcessPartial
SecTmpDir $WORK/nginx-tmp
SecDataDir $WORK/nginx-tmp
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
Include $WORK/modsec/crs-setup.conf
Include $CRS/rules/*.conf
CONF
nginx_conf() { # name, port, modsecurity (0/1)
    local name=$1 port=$2 modsec=$3
    {
        [[ $modsec == 1 ]] && echo "load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;"
        cat <<CONF
worker_processes 1;
pid $WORK/nginx-$name.pid;
error_log $WORK/nginx-$name.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    upstream model { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
CONF
        [[ $modsec == 1 ]] && echo "        modsecurity on; modsecurity_rules_file $WORK/modsec/main.conf;"
        cat <<CONF
        location / {
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
CONF
    } > "$WORK/nginx-$name.conf"
}

# --- the configurations ------------------------------------------------------------------------
CONFIGS=(nginx nginx-modsec-crs portcullis-plain portcullis-full portcullis-full-nocache)
SERVER_PID=
start() { # config, port
    local cfg=$1 port=$2 admin
    case $cfg in
    nginx | nginx-modsec-crs)
        nginx_conf "$cfg" "$port" "$([[ $cfg == nginx ]] && echo 0 || echo 1)"
        nginx -t -q -c "$WORK/nginx-$cfg.conf" -p "$WORK" 2>"$WORK/nginx-$cfg.test.log" || {
            cat "$WORK/nginx-$cfg.test.log" >&2
            return 1
        }
        taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx-$cfg.conf" -p "$WORK" -g "daemon off;" &
        SERVER_PID=$!
        wait_for "http://127.0.0.1:$port/" 60
        ;;
    portcullis-*)
        local dir=${cfg#portcullis-}
        dir=${dir/full-nocache/nocache}
        admin=$(free_port)
        local audit=()
        [[ $dir != plain ]] && audit=(--audit-dir "$WORK/audit-$cfg")
        taskset -c "$SERVER_CPU" "$BIN" serve --manifests "$WORK/$dir" --listen "127.0.0.1:$port" \
            --admin "127.0.0.1:$admin" "${audit[@]}" >"$WORK/$cfg.log" 2>&1 &
        SERVER_PID=$!
        wait_for "http://127.0.0.1:$admin/readyz" 60
        ;;
    esac
    PIDS+=("$SERVER_PID")
}
stop() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}
rss_kib() { # the server's resident memory: the process and its children (nginx's worker)
    local total=0 pid
    for pid in $SERVER_PID $(pgrep -P "$SERVER_PID" || true); do
        total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

GET_PATH='/v1/models?limit=20&order=desc&after=model-17&q=renewable+energy&page=2'
HEADERS=(-H "Authorization: Bearer $TOKEN"
    -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
    -H "Accept: application/json, text/plain, */*"
    -H "Accept-Language: en-GB,en;q=0.9")
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$WORK/chat.json", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA

check() { # config, port: both requests answer 200 with the upstream's body
    local port=$1 code
    code=$(curl -s -o "$WORK/got-get" -w '%{http_code}' "${HEADERS[@]}" "http://127.0.0.1:$port$GET_PATH")
    [[ $code == 200 ]] && cmp -s "$WORK/got-get" "$WORK/response.json" || {
        echo "GET answered $code: $(head -c 300 "$WORK/got-get")" >&2
        return 1
    }
    code=$(curl -s -o "$WORK/got-post" -w '%{http_code}' "${HEADERS[@]}" -H "Content-Type: application/json" \
        --data-binary "@$WORK/chat.json" "http://127.0.0.1:$port/v1/chat/completions")
    [[ $code == 200 ]] && cmp -s "$WORK/got-post" "$WORK/response.json" || {
        echo "POST answered $code: $(head -c 300 "$WORK/got-post")" >&2
        return 1
    }
}

drive() { # port, kind, seconds, output file
    local port=$1 kind=$2 secs=$3 out=$4
    local script=()
    local url="http://127.0.0.1:$port$GET_PATH"
    if [[ $kind == post ]]; then
        script=(-s "$WORK/post.lua")
        url="http://127.0.0.1:$port/v1/chat/completions"
    fi
    taskset -c "$CLIENT_CPU" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${secs}s" --timeout "${TIMEOUT}s" --latency \
        "${script[@]}" "${HEADERS[@]}" "$url" >"$out"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
echo "nginx $(nginx -v 2>&1 | cut -d/ -f2), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), CRS $(basename "$(cat "$CRS/VERSION" 2>/dev/null || echo v4)")" | tee -a "$OUT/machine.txt"
echo "rounds $ROUNDS x ${DURATION}s, $CONNECTIONS connections, ${TIMEOUT}s timeout, server on CPU $SERVER_CPU, wrk and upstream on CPU $CLIENT_CPU" | tee -a "$OUT/machine.txt"

for cfg in "${CONFIGS[@]}"; do # every configuration serves the requests correctly first
    port=$(free_port)
    start "$cfg" "$port"
    if ! check "$port"; then
        echo "$cfg does not serve the benchmark requests correctly: not benchmarked" >&2
        stop
        exit 1
    fi
    stop
    echo "checked $cfg" >&2
done

for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${CONFIGS[@]}"; do
        port=$(free_port)
        start "$cfg" "$port"
        for kind in get post; do
            drive "$port" "$kind" "$WARMUP" /dev/null
            drive "$port" "$kind" "$DURATION" "$OUT/$cfg.$kind.$round.wrk"
            rss_kib >"$OUT/$cfg.$kind.$round.rss"
        done
        stop
        echo "round $round: $cfg done" >&2
    done
done

"$KIT" report "$OUT" "${CONFIGS[@]}" | tee "$OUT/report.md"
echo "results in $OUT" >&2
