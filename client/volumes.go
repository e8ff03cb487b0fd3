package client

import (
	"context"
	"net/http"
	"net/url"

	"kiln.dev/kiln/api"
)

// CreateVolume makes a named volume of sizeMiB (0: 10 GiB, sparse).
func (c *Client) CreateVolume(ctx context.Context, name string, sizeMiB int) (api.Volume, error) {
	return c.CreateVolumeWith(ctx, api.VolumeCreateRequest{Name: name, SizeMiB: sizeMiB})
}

// CreateVolumeWith makes a named volume as req asks (size, labels).
func (c *Client) CreateVolumeWith(ctx context.Context, req api.VolumeCreateRequest) (api.Volume, error) {
	var v api.Volume
	err := c.call(ctx, http.MethodPost, "/volumes", nil, req, &v)
	return v, err
}

// Volumes lists the named volumes.
func (c *Client) Volumes(ctx context.Context) ([]api.Volume, error) {
	var vs []api.Volume
	err := c.call(ctx, http.MethodGet, "/volumes", nil, nil, &vs)
	return vs, err
}

// InspectVolume returns a named volume.
func (c *Client) InspectVolume(ctx context.Context, name string) (api.Volume, error) {
	var v api.Volume
	err := c.call(ctx, http.MethodGet, "/volumes/"+url.PathEscape(name), nil, nil, &v)
	return v, err
}

// RemoveVolume removes a named volume and its data; it is refused (a
// conflict) while any VM refers to it.
func (c *Client) RemoveVolume(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/volumes/"+url.PathEscape(name), nil, nil, nil)
}

// PruneVolumes removes every volume no VM refers to.
func (c *Client) PruneVolumes(ctx context.Context) (api.VolumePruneResponse, error) {
	var r api.VolumePruneResponse
	err := c.call(ctx, http.MethodPost, "/volumes/prune", nil, nil, &r)
	return r, err
}
