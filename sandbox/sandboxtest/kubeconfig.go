package sandboxtest

import "k8s.io/client-go/tools/clientcmd"

// WriteKubeconfigVia writes to dst a copy of the kubeconfig at src with
// proxy-url set on every cluster: the e2e tests' and the benchmark's
// clients then reach the API server through that proxy.
func WriteKubeconfigVia(src, proxy, dst string) error {
	kc, err := clientcmd.LoadFromFile(src)
	if err != nil {
		return err
	}
	for _, c := range kc.Clusters {
		c.ProxyURL = proxy
	}
	return clientcmd.WriteToFile(*kc, dst)
}
