#!/usr/bin/env bash
# The demo: forwards to a small application and uses it through them.
# With a cluster configured (KUBECONFIG or ~/.kube/config reachable) and
# KPF_DEMO_CLUSTER=1, it uses that cluster; otherwise it starts the local
# sandbox (first run: about 10 minutes to build the control plane).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
NS=${KPF_DEMO_NAMESPACE:-kpf-demo}

if [ "${KPF_DEMO_CLUSTER:-}" = 1 ]; then
  KUBECTL=${KUBECTL:-kubectl}
  echo "demo: using the configured cluster ($($KUBECTL config current-context))"
else
  echo "demo: starting the local sandbox (kpf-sandbox up)"
  "$BIN/kpf-sandbox" up
  eval "$("$BIN/kpf-sandbox" env)"
  KUBECTL=$KPF_SANDBOX_KUBECTL
fi

$KUBECTL create namespace "$NS" --dry-run=client -o yaml | $KUBECTL apply -f - >/dev/null
$KUBECTL apply -n "$NS" -f demo/demo.yaml
$KUBECTL rollout status -n "$NS" deployment/frontend deployment/api --timeout=120s
$KUBECTL rollout status -n "$NS" statefulset/db --timeout=120s
$KUBECTL get pods -n "$NS" -o wide

# The forwarder: kpf when it is built, else kubectl port-forward.
if [ -x "$BIN/kpf" ]; then FWD=("$BIN/kpf" forward); else FWD=("$KUBECTL" port-forward); fi
logs=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$logs"; }
trap cleanup EXIT

port=
forward() { # name target ports...; sets $port to the local port
  local name=$1; shift
  "${FWD[@]}" -n "$NS" "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\).*/\1/p' "$logs/$name.log" | head -1)
    [ -n "$port" ] && return
    sleep 0.1
  done
  echo "demo: forward $name did not start:" >&2; cat "$logs/$name.log" >&2; exit 1
}

echo; echo "== ${FWD[*]##*/}: three forwards from this machine into the cluster"
forward frontend deployment/frontend :8080; fe=$port
forward api svc/api :80; api=$port
forward db pod/db-0 :9000; db=$port
echo "frontend  http://127.0.0.1:$fe"
echo "api       http://127.0.0.1:$api"
echo "db        127.0.0.1:$db"
echo
echo "== GET / through the frontend forward"
curl -sS "http://127.0.0.1:$fe/"
echo "== 5 requests to the API service"
for _ in 1 2 3 4 5; do curl -sS "http://127.0.0.1:$api/"; done
echo "== a 64 MiB download through the API forward"
curl -sS -o /dev/null -w '%{size_download} bytes at %{speed_download} bytes/s\n' "http://127.0.0.1:$api/bytes/67108864"
echo "== a round trip to the database-like service"
printf 'ECHO\nhello from the demo\n' | nc -N 127.0.0.1 "$db"
if [ "${FWD[0]##*/}" = kpf ]; then
  echo "== a rollout of the API while requests flow (kubectl port-forward would die here)"
  $KUBECTL rollout restart -n "$NS" deployment/api >/dev/null
  ok=0 failed=0 pods=""
  end=$((SECONDS + 8))
  while [ $SECONDS -lt $end ]; do
    if line=$(curl -fsS --max-time 10 "http://127.0.0.1:$api/" 2>/dev/null); then
      ok=$((ok + 1)); pods="$pods $(echo "$line" | awk '{print $2}')"
    else
      failed=$((failed + 1))
    fi
  done
  $KUBECTL rollout status -n "$NS" deployment/api --timeout=60s >/dev/null
  echo "$ok requests answered, $failed failed; pods that answered:$(echo "$pods" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
fi
if [ "${FWD[0]##*/}" = kpf ] && [ "$NS" = kpf-demo ]; then
  echo "== the same forwards from a file, in kpf's background daemon (kpf up -d --wait)"
  export KPF_HOME="$logs/home"
  "$BIN/kpf" up -d --wait --timeout 60s -f demo/kpf.yaml >"$logs/up.log" 2>&1 || { cat "$logs/up.log"; exit 1; }
  "$BIN/kpf" status | cut -c1-200
  "$BIN/kpf" down --all >/dev/null
  echo "== every service of the namespace, kept in step with it: kpf up --all -n $NS --address auto -d"
  "$BIN/kpf" up --all -n "$NS" --address auto -d >"$logs/all.log" 2>&1 || { cat "$logs/all.log"; exit 1; }
  for _ in $(seq 300); do
    [ "$("$BIN/kpf" status --json | grep -c '"state": *"ready"')" -ge 3 ] && break
    sleep 0.1
  done
  "$BIN/kpf" status | cut -c14-130 | sed -n '4,$p'
  echo "\$ kpf hosts"; "$BIN/kpf" hosts
  echo "== pick from a list: kpf ui -n $NS (its first screen, printed by --print)"
  "$BIN/kpf" ui --print -n "$NS" --width 80 --height 12 | sed 's/ *$//'
  "$BIN/kpf" down --all >/dev/null
  echo "== kpf takes kubectl port-forward's words as they are: kpf svc/api :80"
  "$BIN/kpf" -n "$NS" --timeout 3s svc/api :80 2>&1 | head -2 || true
  echo "== watching what flows: kpf forward --http-log FILE --metrics-addr 127.0.0.1:0"
  forward watch svc/api :80 --http-log "$logs/http.log" --metrics-addr 127.0.0.1:0; w=$port
  curl -fsS -o /dev/null "http://127.0.0.1:$w/"
  curl -fsS -o /dev/null "http://127.0.0.1:$w/bytes/100000"
  curl -fsS -o /dev/null -X POST --data-binary 'hello' -H 'Authorization: Bearer never-logged' "http://127.0.0.1:$w/echo"
  sleep 0.2
  cut -c1-190 "$logs/http.log"
  metrics=$(sed -n 's/^metrics: \(http.*\)/\1/p' "$logs/watch.log" | head -1)
  curl -fsS "$metrics" | grep -E '^kpf_(connections_total|client_bytes_total|pod_bytes_total)' | cut -c1-190
  echo "== services by their cluster names, no ports to pick: kpf proxy (SOCKS5 and HTTP on one port)"
  "$BIN/kpf" -n "$NS" proxy --listen 127.0.0.1:0 >"$logs/proxy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    px=$(sed -n 's/^Proxying from \([0-9.:]*\) .*/\1/p' "$logs/proxy.log" | head -1)
    [ -n "$px" ] && break
    sleep 0.1
  done
  echo "\$ curl --socks5-hostname $px http://api/"; curl -sS --socks5-hostname "$px" http://api/
  echo "\$ curl -x http://$px http://api.$NS.svc.cluster.local/"; curl -sS -x "http://$px" "http://api.$NS.svc.cluster.local/"
  echo "\$ curl -x http://$px http://db-0.db.$NS.svc.cluster.local:9000/bytes/1000000 | wc -c"; curl -sS -x "http://$px" "http://db-0.db.$NS.svc.cluster.local:9000/bytes/1000000" | wc -c
  echo "\$ curl -x http://$px http://apx.$NS/"; curl -sS -x "http://$px" "http://apx.$NS/" || true
  if [ "${KPF_DEMO_CLUSTER:-}" != 1 ] && ip link show kpfsb0 >/dev/null 2>&1 && command -v dig >/dev/null && [ -x /usr/sbin/dnsmasq ]; then
    $KUBECTL apply -n "$NS" -f demo/dns.yaml >/dev/null
    $KUBECTL rollout status -n "$NS" deployment/dns --timeout=60s >/dev/null
    echo "== UDP: dig asks the cluster's DNS server through kpf forward svc/dns :53/udp (a relay pod carries the datagrams)"
    "$BIN/kpf" relay image | xargs -I{} "$BIN/kpf-sandbox" image add {} "$BIN/kpf" >/dev/null
    "$BIN/kpf" -n "$NS" forward svc/dns :53/udp >"$logs/dns.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do
      dport=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) -> 53\/udp/\1/p' "$logs/dns.log" | head -1)
      [ -n "$dport" ] && break
      sleep 0.1
    done
    grep '/udp' "$logs/dns.log" | head -1
    echo "\$ dig @127.0.0.1 -p $dport api.example.test +short"; dig @127.0.0.1 -p "$dport" api.example.test +short
  fi
  echo "== kpf doctor: why a forward to port 80 of the frontend gets nothing (it listens on 8080)"
  "$BIN/kpf" doctor -n "$NS" deploy/frontend 8080:80 2>&1 | grep -v '^ *from \|^ *server ' | cut -c1-160 || true
fi
echo
echo "demo done. The sandbox keeps running: kpf-sandbox down (or make sandbox-down) stops it."
