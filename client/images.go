package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"kiln.dev/kiln/api"
)

// rawBody is a request body sent as is rather than encoded as JSON.
type rawBody struct {
	r           io.Reader
	contentType string
}

// PullOptions are the choices of PullImage.
type PullOptions struct {
	// Insecure allows plain HTTP to a registry that is not on loopback.
	Insecure bool
	// Platform is "os/arch[/variant]" of a multi-platform image; empty
	// means linux/amd64.
	Platform string
	// Progress, if not nil, is called with each progress message of the
	// daemon's stream, in order, on the calling goroutine.
	Progress func(api.JSONMessage)
}

// Pull pulls an image into the daemon's store.
func (c *Client) Pull(ctx context.Context, ref string, insecure bool) (api.Image, error) {
	return c.PullImage(ctx, ref, PullOptions{Insecure: insecure})
}

// PullImage pulls an image into the daemon's store, passing the daemon's
// progress messages to o.Progress as they come, and returns the image. An
// error the daemon meets after its stream began is returned as an *Error
// with the status the daemon gave it, like one met before.
func (c *Client) PullImage(ctx context.Context, ref string, o PullOptions) (api.Image, error) {
	var img api.Image
	aux, err := c.transfer(ctx, "/images/pull", api.PullRequest{Ref: ref, Insecure: o.Insecure, Platform: o.Platform}, o.Progress)
	if err != nil {
		return img, err
	}
	if aux == nil {
		return img, fmt.Errorf("pulling %s: the daemon's answer ended without the image", ref)
	}
	if err := json.Unmarshal(aux, &img); err != nil {
		return img, fmt.Errorf("pulling %s: decoding the image: %w", ref, err)
	}
	return img, nil
}

// PushOptions are the choices of PushImage.
type PushOptions struct {
	// Insecure allows plain HTTP to a registry that is not on loopback.
	Insecure bool
	// Progress, if not nil, is called with each progress message (totals
	// over all blobs) as it comes.
	Progress func(api.JSONMessage)
}

// Push pushes a stored image (src: tag, digest or ID) to the reference dst.
func (c *Client) Push(ctx context.Context, src, dst string, insecure bool) error {
	return c.PushImage(ctx, src, dst, PushOptions{Insecure: insecure})
}

// PushImage pushes a stored image (src: tag, digest or ID) to the
// reference dst, passing the daemon's progress messages to o.Progress.
func (c *Client) PushImage(ctx context.Context, src, dst string, o PushOptions) error {
	last := ""
	progress := func(m api.JSONMessage) {
		last = m.Status
		if o.Progress != nil {
			o.Progress(m)
		}
	}
	if _, err := c.transfer(ctx, "/images/push", api.PushRequest{Src: src, Dst: dst, Insecure: o.Insecure}, progress); err != nil {
		return err
	}
	if last != api.StatusPushed {
		return fmt.Errorf("pushing %s to %s: the daemon's answer ended before the push did", src, dst)
	}
	return nil
}

// transfer posts req to a streaming endpoint and reads its JSONMessage
// stream, passing each message but the last result to progress, and
// returns the Aux of the stream's result, if any.
func (c *Client) transfer(ctx context.Context, path string, req any, progress func(api.JSONMessage)) (json.RawMessage, error) {
	resp, err := c.do(ctx, http.MethodPost, path, nil, req, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var aux json.RawMessage
	err = decodeStream(resp.Body, func(m *api.JSONMessage) error {
		if m.Error != "" || m.ErrorDetail != nil {
			return streamError(m)
		}
		if m.Aux != nil {
			aux = m.Aux
			return nil
		}
		if progress != nil {
			progress(*m)
		}
		return nil
	})
	return aux, err
}

// streamError is the error a stream ended with, classified by the status
// the daemon gave it.
func streamError(m *api.JSONMessage) error {
	e := &Error{Status: http.StatusInternalServerError, Message: m.Error}
	if d := m.ErrorDetail; d != nil {
		if d.Code != 0 {
			e.Status = d.Code
		}
		if e.Message == "" {
			e.Message = d.Message
		}
	}
	return e
}

// LoadImages loads the images of a docker-archive ("docker save" output)
// or OCI archive read from archive, streamed as the request body, and
// returns them. name names the archive in the daemon's messages; the
// daemon opens no file of the caller's.
func (c *Client) LoadImages(ctx context.Context, archive io.Reader, name string) ([]api.Image, error) {
	var imgs []api.Image
	q := url.Values{}
	if name != "" {
		q.Set("name", name)
	}
	err := c.call(ctx, http.MethodPost, "/images/load", q, rawBody{r: archive, contentType: "application/x-tar"}, &imgs)
	return imgs, err
}

// RemoveImage removes a stored image by tag, digest or ID; see
// RemoveImages.
func (c *Client) RemoveImage(ctx context.Context, ref string, force bool) error {
	_, err := c.RemoveImages(ctx, ref, force)
	return err
}

// RemoveImages removes a stored image by tag, digest or ID and returns
// what went: removing a tag of an image that keeps other tags only
// untags it; otherwise the image is refused (ErrConflict, naming the VMs)
// while a VM made from it exists, unless force, and deleted with all its
// tags. Blobs stay until PruneImages.
func (c *Client) RemoveImages(ctx context.Context, ref string, force bool) ([]api.ImageDeleted, error) {
	q := url.Values{"ref": {ref}}
	if force {
		q.Set("force", "1")
	}
	var out []api.ImageDeleted
	err := c.call(ctx, http.MethodDelete, "/images", q, nil, &out)
	return out, err
}

// PruneImages deletes the blobs and root filesystems no image references
// and returns the bytes freed.
func (c *Client) PruneImages(ctx context.Context) (int64, error) {
	var r api.PruneResponse
	err := c.call(ctx, http.MethodPost, "/images/prune", nil, nil, &r)
	return r.SpaceReclaimed, err
}

// Logout forgets the credentials stored for a registry.
func (c *Client) Logout(ctx context.Context, registry string) error {
	return c.call(ctx, http.MethodDelete, "/auth", url.Values{"registry": {registry}}, nil, nil)
}

// TagImage points the tag dst at the stored image src (tag, digest or
// ID), as docker tag, and returns the image.
func (c *Client) TagImage(ctx context.Context, src, dst string) (api.Image, error) {
	var img api.Image
	err := c.call(ctx, http.MethodPost, "/images/tag", nil, api.TagRequest{Src: src, Dst: dst}, &img)
	return img, err
}
