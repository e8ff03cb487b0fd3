package daemon

import (
	"net/http"
	"net/netip"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/network"
	"kiln.dev/kiln/internal/supervisor"
)

func (d *Daemon) networkRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/networks", d.handle(d.createNetwork))
	mux.HandleFunc("GET /v1/networks", d.handle(d.listNetworks))
	mux.HandleFunc("GET /v1/networks/{name}", d.handle(d.inspectNetwork))
	mux.HandleFunc("DELETE /v1/networks/{name}", d.handle(d.removeNetwork))
}

func (d *Daemon) createNetwork(w http.ResponseWriter, r *http.Request) error {
	var c api.NetworkCreate
	if err := decode(w, r, &c); err != nil {
		return err
	}
	v, err := d.sup.CreateNetwork(r.Context(), supervisor.NetworkRequest{Name: c.Name, Subnet: c.Subnet, Gateway: c.Gateway, Egress: c.Egress, IsolateVMs: c.IsolateVMs, Labels: c.Labels})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, networkToAPI(v))
	return nil
}

func (d *Daemon) listNetworks(w http.ResponseWriter, r *http.Request) error {
	vs, err := d.sup.Networks(r.Context())
	if err != nil {
		return err
	}
	out := []api.Network{}
	for _, v := range vs {
		out = append(out, networkToAPI(v))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) inspectNetwork(w http.ResponseWriter, r *http.Request) error {
	v, err := d.sup.Network(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, networkToAPI(v))
	return nil
}

func (d *Daemon) removeNetwork(w http.ResponseWriter, r *http.Request) error {
	if err := d.sup.RemoveNetwork(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func networkToAPI(v *supervisor.NetworkView) api.Network {
	out := api.Network{
		Name: v.Name, Subnet: v.Subnet.String(), Gateway: v.Gateway.String(), Bridge: v.Bridge,
		Egress: v.Egress, IsolateVMs: v.IsolateVMs, Created: v.Created, VMs: []api.NetworkVM{}, Labels: v.Labels,
	}
	for _, n := range v.VMs {
		out.VMs = append(out.VMs, api.NetworkVM{ID: n.ID, Name: n.Name, IP: n.IP})
	}
	return out
}

// networkSettings describes a VM's place on its bridge network, nil for
// other modes.
func networkSettings(v *supervisor.View) *api.NetworkSettings {
	a := v.Spec.Attach
	if a == nil {
		return nil
	}
	bits := 0
	if p, err := netip.ParsePrefix(a.Subnet); err == nil {
		bits = p.Bits()
	}
	return &api.NetworkSettings{Network: a.Network, IPAddress: a.IP, PrefixLen: bits, Gateway: a.Gateway, MACAddress: network.MAC(v.Record.ID), TAP: a.TAP}
}
