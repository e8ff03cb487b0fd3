package client

import (
	"context"
	"net/http"
	"net/url"

	"kiln.dev/kiln/api"
)

func networkPath(name string) string { return "/networks/" + url.PathEscape(name) }

// CreateNetwork makes a bridge network.
func (c *Client) CreateNetwork(ctx context.Context, req api.NetworkCreate) (api.Network, error) {
	var n api.Network
	err := c.call(ctx, http.MethodPost, "/networks", nil, req, &n)
	return n, err
}

// Networks lists the bridge networks.
func (c *Client) Networks(ctx context.Context) ([]api.Network, error) {
	var ns []api.Network
	err := c.call(ctx, http.MethodGet, "/networks", nil, nil, &ns)
	return ns, err
}

// InspectNetwork returns one network and its VMs.
func (c *Client) InspectNetwork(ctx context.Context, name string) (api.Network, error) {
	var n api.Network
	err := c.call(ctx, http.MethodGet, networkPath(name), nil, nil, &n)
	return n, err
}

// RemoveNetwork removes a network no VM is on.
func (c *Client) RemoveNetwork(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, networkPath(name), nil, nil, nil)
}
