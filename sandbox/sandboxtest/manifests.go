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
