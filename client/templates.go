package client

import (
	"context"
	"net/http"

	"kiln.dev/kiln/api"
)

// PruneTemplates removes every booted template of the root.
func (c *Client) PruneTemplates(ctx context.Context) (api.TemplatePruneResponse, error) {
	var r api.TemplatePruneResponse
	err := c.call(ctx, http.MethodPost, "/templates/prune", nil, nil, &r)
	return r, err
}
