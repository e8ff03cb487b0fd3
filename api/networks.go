package api

import "time"

// NetworkCreate asks for a bridge network.
type NetworkCreate struct {
	Name string `json:"name"`
	// Subnet is an IPv4 prefix ("10.99.0.0/24") that overlaps no other
	// network and no route of the host.
	Subnet string `json:"subnet"`
	// Gateway is the bridge's address; "" is the subnet's first address.
	Gateway string `json:"gateway,omitempty"`
	// Egress lets the network's VMs reach beyond it (masqueraded); without
	// it they reach only their gateway.
	Egress bool `json:"egress,omitempty"`
	// IsolateVMs stops the network's VMs reaching each other.
	IsolateVMs bool `json:"isolateVMs,omitempty"`
	// Labels are the user's metadata.
	Labels map[string]string `json:"labels,omitempty"`
}

// Network is a bridge network as inspect shows it.
type Network struct {
	Name       string            `json:"name"`
	Subnet     string            `json:"subnet"`
	Gateway    string            `json:"gateway"`
	Bridge     string            `json:"bridge"`
	Egress     bool              `json:"egress"`
	IsolateVMs bool              `json:"isolateVMs"`
	Created    time.Time         `json:"created"`
	VMs        []NetworkVM       `json:"vms"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// NetworkVM is a VM on a network and its address.
type NetworkVM struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	IP   string `json:"ip"`
}

// NetworkSettings is a VM's place on a bridge network.
type NetworkSettings struct {
	Network    string `json:"network"`
	IPAddress  string `json:"ipAddress"`
	PrefixLen  int    `json:"prefixLen"`
	Gateway    string `json:"gateway"`
	MACAddress string `json:"macAddress"`
	TAP        string `json:"tap"`
}
