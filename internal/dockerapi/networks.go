package dockerapi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/internal/errdefs"
)

// The networks every docker daemon has. "bridge" is kiln's default
// network (QEMU's user-mode one: each VM alone behind its own NAT),
// "none" no network; there is no "host".
var builtinNetworks = []string{"bridge", "none"}

// networkID is a network's docker ID: kiln names networks only, so the
// ID is derived from the name.
func networkID(name string) string {
	h := sha256.Sum256([]byte("kiln-network:" + name))
	return hex.EncodeToString(h[:])
}

func (s *Server) networkRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /networks", s.handle(s.listNetworks))
	mux.HandleFunc("POST /networks/create", s.handle(s.createNetwork))
	mux.HandleFunc("GET /networks/{id}", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		n, err := s.findNetwork(r, r.PathValue("id"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, n)
		return nil
	}))
	mux.HandleFunc("DELETE /networks/{id}", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		n, err := s.findNetwork(r, r.PathValue("id"))
		if err != nil {
			return err
		}
		if contains(builtinNetworks, n.Name) {
			return statusError{http.StatusForbidden, n.Name + " is a pre-defined network and cannot be removed"}
		}
		return noContent(w, s.kiln.RemoveNetwork(r.Context(), n.Name))
	}))
	mux.HandleFunc("POST /networks/{id}/connect", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("connecting a container to a network after create is not supported: a VM's network is chosen at create (--network): %w", errNotImplemented)
	}))
	mux.HandleFunc("POST /networks/{id}/disconnect", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("disconnecting a container from its network is not supported: a VM's network is chosen at create: %w", errNotImplemented)
	}))
	mux.HandleFunc("POST /networks/prune", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("network prune is not supported yet: remove networks by name: %w", errNotImplemented)
	}))
}

func builtinNetwork(name string) network.Inspect {
	return network.Inspect{
		Name: name, ID: networkID(name), Scope: "local", Driver: map[string]string{"bridge": "kiln-user", "none": "null"}[name],
		IPAM: network.IPAM{Driver: "default", Config: []network.IPAMConfig{}}, Containers: map[string]network.EndpointResource{},
		Options: map[string]string{}, Labels: map[string]string{},
	}
}

func toNetwork(n api.Network) network.Inspect {
	out := network.Inspect{
		Name: n.Name, ID: networkID(n.Name), Created: n.Created, Scope: "local", Driver: "bridge",
		IPAM:       network.IPAM{Driver: "default", Config: []network.IPAMConfig{{Subnet: n.Subnet, Gateway: n.Gateway}}},
		Internal:   !n.Egress,
		Containers: map[string]network.EndpointResource{},
		// Only the options a user can give are shown: clients (compose)
		// compare them with what they asked for.
		Options: map[string]string{},
		Labels:  labelsOrEmpty(n.Labels),
	}
	if n.IsolateVMs {
		out.Options["com.docker.network.bridge.enable_icc"] = "false"
	}
	for _, v := range n.VMs {
		out.Containers[v.ID] = network.EndpointResource{Name: v.Name, EndpointID: v.ID, IPv4Address: v.IP}
	}
	return out
}

func (s *Server) allNetworks(r *http.Request) ([]network.Inspect, error) {
	nets, err := s.kiln.Networks(r.Context())
	if err != nil {
		return nil, err
	}
	var out []network.Inspect
	for _, b := range builtinNetworks {
		out = append(out, builtinNetwork(b))
	}
	for _, n := range nets {
		out = append(out, toNetwork(n))
	}
	return out, nil
}

// findNetwork finds a network by name, ID or ID prefix, as docker does.
func (s *Server) findNetwork(r *http.Request, ref string) (network.Inspect, error) {
	all, err := s.allNetworks(r)
	if err != nil {
		return network.Inspect{}, err
	}
	for _, n := range all {
		if n.Name == ref || n.ID == ref {
			return n, nil
		}
	}
	var found []network.Inspect
	for _, n := range all {
		if strings.HasPrefix(n.ID, ref) {
			found = append(found, n)
		}
	}
	if len(found) == 1 {
		return found[0], nil
	}
	return network.Inspect{}, fmt.Errorf("network %s not found: %w", ref, errdefs.ErrNotFound)
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	args, err := filters.FromJSON(r.URL.Query().Get("filters"))
	if err != nil {
		return refuse("invalid filters %q: %v", r.URL.Query().Get("filters"), err)
	}
	if err := args.Validate(map[string]bool{"name": true, "id": true, "driver": true, "type": true, "label": true}); err != nil {
		return refuse("%v", err)
	}
	all, err := s.allNetworks(r)
	if err != nil {
		return err
	}
	out := []network.Inspect{}
	for _, n := range all {
		if args.Contains("name") && !matchAny(args.Get("name"), func(f string) bool { return strings.Contains(n.Name, f) }) ||
			args.Contains("id") && !matchAny(args.Get("id"), func(f string) bool { return strings.HasPrefix(n.ID, f) }) ||
			args.Contains("driver") && !args.ExactMatch("driver", n.Driver) ||
			!args.MatchKVList("label", n.Labels) {
			continue
		}
		if args.Contains("type") {
			t := "custom"
			if contains(builtinNetworks, n.Name) {
				t = "builtin"
			}
			if !args.ExactMatch("type", t) {
				continue
			}
		}
		out = append(out, n)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// createNetwork makes a kiln bridge network.
func (s *Server) createNetwork(w http.ResponseWriter, r *http.Request) error {
	var req network.CreateRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if req.Name == "" {
		return refuse("no network name given: Name is required")
	}
	if contains(builtinNetworks, req.Name) || req.Name == "host" {
		return fmt.Errorf("network with name %s already exists (a pre-defined one): %w", req.Name, errdefs.ErrConflict)
	}
	if req.Driver != "" && req.Driver != "bridge" {
		return refuse("network driver %s is not supported: kiln makes bridge networks", req.Driver)
	}
	if req.EnableIPv6 != nil && *req.EnableIPv6 {
		return refuse("EnableIPv6 is not supported: kiln's bridge networks are IPv4")
	}
	nc := api.NetworkCreate{Name: req.Name, Egress: !req.Internal, Labels: req.Labels}
	if v := req.Options["com.docker.network.bridge.enable_icc"]; v == "false" {
		nc.IsolateVMs = true
	}
	if req.IPAM != nil {
		if len(req.IPAM.Config) > 1 {
			return refuse("a network takes one subnet; %d given", len(req.IPAM.Config))
		}
		if len(req.IPAM.Config) == 1 {
			c := req.IPAM.Config[0]
			if c.IPRange != "" || len(c.AuxAddress) > 0 {
				return refuse("IPRange and AuxiliaryAddresses are not supported: give Subnet and Gateway")
			}
			nc.Subnet, nc.Gateway = c.Subnet, c.Gateway
		}
	}
	// Without a subnet the daemon picks one, as docker's does.
	n, err := s.kiln.CreateNetwork(r.Context(), nc)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, network.CreateResponse{ID: networkID(n.Name)})
	return nil
}
