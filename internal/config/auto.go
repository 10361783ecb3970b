package config

import (
	"hash/fnv"
	"net/netip"
	"strings"
)

// Auto, as a forward's address, gives it a loopback address of its own, so
// that every service keeps its real port (5432, 6379, 8080) without
// conflicts.
const Auto = "auto"

// AutoPrefix is the network auto addresses are taken from. On Linux and
// Windows every 127.x.y.z is the machine's with no setup; on macOS only
// 127.0.0.1 is, until `ifconfig lo0 alias ADDR` adds another.
var AutoPrefix = netip.MustParsePrefix("127.20.0.0/16")

// AutoAddress is the loopback address of a forward's target: the same for
// the same context, namespace and target on every run, and so in every
// hosts file written for it.
func AutoAddress(context, namespace, target string, attempt int) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(strings.ToLower(context + "\x00" + namespace + "\x00" + canonicalTarget(target))))
	h.Write([]byte{byte(attempt)})
	n := h.Sum32() % (256 * 254)
	base := AutoPrefix.Addr().As4()
	return netip.AddrFrom4([4]byte{base[0], base[1], byte(n / 254), byte(n%254) + 1})
}

// canonicalTarget spells a target's kind one way: svc/api and
// service/api are the same service.
func canonicalTarget(t string) string {
	kind, name, ok := strings.Cut(t, "/")
	if !ok {
		return "pod/" + t
	}
	switch kind {
	case "svc", "service", "services":
		kind = "service"
	case "po", "pod", "pods":
		kind = "pod"
	case "deploy", "deployment", "deployments":
		kind = "deployment"
	case "sts", "statefulset", "statefulsets":
		kind = "statefulset"
	}
	return kind + "/" + name
}

// autoAddress is the forward's auto address; a second target of the file
// that hashes to a taken address takes the next one.
func (p *yamlParser) autoAddress(fw Forward) string {
	if p.autoOwner == nil {
		p.autoOwner = map[string]string{}
	}
	key := canonicalTarget(fw.Target) + "\x00" + fw.Namespace + "\x00" + fw.Context
	for i := 0; ; i++ {
		a := AutoAddress(fw.Context, fw.Namespace, fw.Target, i).String()
		if owner, taken := p.autoOwner[a]; !taken || owner == key {
			p.autoOwner[a] = key
			return a
		}
	}
}
