package config

import (
	"fmt"
	"strings"
)

// ToYAML writes f as kpf.yaml (kpf config convert).
func ToYAML(f *File) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Converted from %s by kpf config convert.\nversion: 1\nforwards:\n", f.Path)
	for _, fw := range f.Forwards {
		fmt.Fprintf(&b, "  - name: %s\n", fw.Name)
		if fw.Context != "" {
			fmt.Fprintf(&b, "    context: %s\n", fw.Context)
		}
		if fw.Namespace != "" {
			fmt.Fprintf(&b, "    namespace: %s\n", fw.Namespace)
		}
		fmt.Fprintf(&b, "    target: %s\n", fw.Target)
		var ports []string
		for _, p := range fw.Ports {
			ports = append(ports, fmt.Sprintf("%q", p.String()))
		}
		fmt.Fprintf(&b, "    ports: [%s]\n", strings.Join(ports, ", "))
		if fw.AutoAddress {
			fmt.Fprintf(&b, "    address: %s\n", Auto)
		} else if len(fw.Addresses) > 0 && !(len(fw.Addresses) == 1 && fw.Addresses[0] == "localhost") {
			fmt.Fprintf(&b, "    address: %q\n", strings.Join(fw.Addresses, ","))
		}
		if fw.Balance {
			b.WriteString("    balance: true\n")
		}
	}
	return []byte(b.String())
}
