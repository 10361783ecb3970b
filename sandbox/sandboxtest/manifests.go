package sandboxtest

import (
	"strconv"
	"strings"
)

// App is a Deployment of a built-in image (kpf.test/http, kpf.test/bulk,
// kpf.test/echo) with a readiness probe, and a Service over it: port 80 to
// the container port named "main".
func App(name, image string, replicas, port int) string {
	probe := "{tcpSocket: {port: main}, periodSeconds: 1}"
	if strings.HasSuffix(image, "/http") {
		probe = "{httpGet: {path: /healthz, port: main}, periodSeconds: 1}"
	}
	return strings.NewReplacer("NAME", name, "IMAGE", image, "REPLICAS", strconv.Itoa(replicas), "PORT", strconv.Itoa(port), "PROBE", probe).Replace(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: NAME}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: NAME}}
  template:
    metadata: {labels: {app: NAME}}
    spec:
      containers:
      - name: main
        image: IMAGE
        ports: [{name: main, containerPort: PORT}]
        readinessProbe: PROBE
---
apiVersion: v1
kind: Service
metadata: {name: NAME}
spec:
  selector: {app: NAME}
  ports: [{name: main, port: 80, targetPort: main}]
`)
}

// PostgresPod is a pod "postgres" (label app=postgres) running Debian's
// PostgreSQL on its pod address, port 5432: a cluster in dataDir (which
// the postgres user must be able to write), trust authentication for the
// user postgres from anywhere, fsync off.
func PostgresPod(dataDir string) string {
	return strings.ReplaceAll(`
apiVersion: v1
kind: Pod
metadata: {name: postgres, labels: {app: postgres}}
spec:
  containers:
  - name: postgres
    image: postgres
    command: [sh, -c, 'bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1) && runuser -u postgres -- $bin/initdb -D DATA/pg --auth=trust -U postgres >/dev/null && echo "host all all 0.0.0.0/0 trust" >> DATA/pg/pg_hba.conf && exec runuser -u postgres -- $bin/postgres -D DATA/pg -k DATA -c listen_addresses=$KPF_POD_ADDR -p 5432 -c fsync=off']
    ports: [{containerPort: 5432}]
    readinessProbe: {tcpSocket: {port: 5432}, periodSeconds: 1}
`, "DATA", dataDir)
}

// RedisPod is a pod "redis" (label app=redis) running Debian's
// redis-server on its pod address, port 6379, keeping nothing on disk.
const RedisPod = `
apiVersion: v1
kind: Pod
metadata: {name: redis, labels: {app: redis}}
spec:
  containers:
  - name: redis
    image: redis
    command: [redis-server, --bind, $(KPF_POD_ADDR), --port, "6379", --save, "", --appendonly, "no", --protected-mode, "no"]
    ports: [{containerPort: 6379}]
    readinessProbe: {tcpSocket: {port: 6379}, periodSeconds: 1}
`
