package cluster

import "crypto/tls"

// TunnelTLS is the TLS configuration c's tunnels use; nil once closed.
func TunnelTLS(c *Conn) *tls.Config {
	c.c.mu.Lock()
	defer c.c.mu.Unlock()
	return c.c.tls
}
