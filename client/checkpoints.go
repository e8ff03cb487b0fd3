package client

import (
	"context"
	"net/http"
	"net/url"

	"kiln.dev/kiln/api"
)

// CreateCheckpoint saves the running VM ref as checkpoint name; without
// leaveRunning the VM then ends, as a stop would.
func (c *Client) CreateCheckpoint(ctx context.Context, ref, name string, leaveRunning bool) error {
	return c.call(ctx, http.MethodPost, vmPath(ref, "/checkpoints"), nil, api.CheckpointCreateRequest{Name: name, LeaveRunning: leaveRunning}, nil)
}

// Checkpoints lists the checkpoints of VM ref, oldest first.
func (c *Client) Checkpoints(ctx context.Context, ref string) ([]api.Checkpoint, error) {
	var cps []api.Checkpoint
	err := c.call(ctx, http.MethodGet, vmPath(ref, "/checkpoints"), nil, nil, &cps)
	return cps, err
}

// RemoveCheckpoint deletes checkpoint name of VM ref.
func (c *Client) RemoveCheckpoint(ctx context.Context, ref, name string) error {
	return c.call(ctx, http.MethodDelete, vmPath(ref, "/checkpoints/"+url.PathEscape(name)), nil, nil, nil)
}
