#!/usr/bin/env bash
# N forwards (default 200, N services in one namespace) in one
# kpf up -d --wait on the sandbox: time until every one is ready, the pod
# watches it added on the API server, and the daemon's memory per
# forward (docs/benchmarks.md). Usage: make build; scripts/bench-startup.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
KPF=${KPF:-$root/bin/kpf}
N=${N:-200}
"$root/bin/kpf-sandbox" up >/dev/null
export KUBECONFIG=$("$root/bin/kpf-sandbox" env | sed -n 's/^export KUBECONFIG=//p' | tr -d "'\"")
K="$root/bin/kpf-sandbox kubectl"
ns=kpf-startup
if ! $K get ns $ns >/dev/null 2>&1; then
  $K create ns $ns >/dev/null
  sleep 2
  { cat <<Y
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: kpf.test/http, ports: [{containerPort: 8080}]}]}
Y
  for i in $(seq 0 $((N-1))); do printf -- "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n" $i; done; } | $K apply -n $ns -f - >/dev/null
  $K rollout status -n $ns deploy/web --timeout=60s >/dev/null
fi
dir=$(mktemp -d); home=$(mktemp -d)
{ echo "forwards:"; for i in $(seq 0 $((N-1))); do echo "- {name: s$i, namespace: $ns, target: svc/s$i, ports: [':80']}"; done; } > $dir/kpf.yaml
watches() { $K get --raw /metrics | awk '/^apiserver_longrunning_requests\{/ && /resource="pods"/ && /verb="WATCH"/ {s+=$NF} END {print s+0}'; }
w0=$(watches)
start=$(date +%s.%N)
KPF_HOME=$home $KPF up -d --wait --timeout 120s -f $dir/kpf.yaml >/dev/null
end=$(date +%s.%N)
w1=$(watches)
pid=$(KPF_HOME=$home $KPF status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
echo "forwards=$N ready_in=$(echo "$end - $start" | bc)s pod_watches_added=$((w1 - w0)) daemon_rss=${rss}kB per_forward=$((rss / N))kB"
KPF_HOME=$home $KPF down --all >/dev/null
rm -rf $dir $home
