package daemon

import (
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/manager"
)

// ForwardOf is a manager's row as the API shows it (File, Context,
// Cluster and User are the daemon's to fill in: the manager does not know
// them). Every field is copied by name, so a field the manager adds stays
// out of the API until it is added here and to api.Forward.
func ForwardOf(r manager.Row) api.Forward {
	return api.Forward{
		Name:         r.Name,
		File:         r.File,
		Context:      r.Context,
		Cluster:      r.Cluster,
		User:         r.User,
		Namespace:    r.Namespace,
		Target:       r.Target,
		Ports:        r.Ports,
		Pod:          r.Pod,
		Local:        r.Local,
		Addresses:    r.Addresses,
		State:        r.State,
		Health:       r.Health,
		HealthNote:   r.HealthNote,
		Open:         r.Open,
		Total:        r.Total,
		Failed:       r.Failed,
		BytesIn:      r.BytesIn,
		BytesOut:     r.BytesOut,
		RateIn:       r.RateIn,
		RateOut:      r.RateOut,
		Reconnects:   r.Reconnects,
		Switches:     r.Switches,
		HTTPLog:      r.HTTPLog,
		UDPPeers:     r.UDPPeers,
		DatagramsIn:  r.DatagramsIn,
		DatagramsOut: r.DatagramsOut,
		Relay:        r.Relay,
		RetryAt:      r.RetryAt,
		LastError:    r.LastError,
		NotListening: r.NotListening,
	}
}

// ForwardsOf is ForwardOf of every row (kpf up's table in the foreground
// shows the same columns as kpf status).
func ForwardsOf(rows []manager.Row) []api.Forward {
	out := make([]api.Forward, len(rows))
	for i, r := range rows {
		out[i] = ForwardOf(r)
	}
	return out
}
