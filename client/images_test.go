package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
)

// stream writes msgs as the daemon's ndjson progress stream.
func stream(w http.ResponseWriter, msgs ...any) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	for _, m := range msgs {
		_ = enc.Encode(m)
		w.(http.Flusher).Flush()
	}
}

func TestPullImageStreamsProgress(t *testing.T) {
	var got api.PullRequest
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/images/pull" {
			t.Errorf("request %s %s", r.Method, r.URL.Path)
		}
		_ = json.NewDecoder(r.Body).Decode(&got)
		stream(w,
			api.JSONMessage{Status: api.StatusDownloading, ID: "sha256:0123456789ab", ProgressDetail: &api.ProgressDetail{Current: 1, Total: 3}},
			api.JSONMessage{Status: api.StatusDownloadComplete, ID: "sha256:0123456789ab", ProgressDetail: &api.ProgressDetail{Current: 3, Total: 3}},
			map[string]any{"aux": map[string]any{"id": "sha256:feed", "digest": "sha256:beef", "repoTags": []string{"example.test/app:v1"}}},
		)
	}))
	var msgs []api.JSONMessage
	img, err := c.PullImage(context.Background(), "example.test/app:v1", client.PullOptions{Insecure: true, Platform: "linux/arm64", Progress: func(m api.JSONMessage) { msgs = append(msgs, m) }})
	if err != nil {
		t.Fatal(err)
	}
	if want := (api.PullRequest{Ref: "example.test/app:v1", Insecure: true, Platform: "linux/arm64"}); got != want {
		t.Errorf("request %+v, want %+v", got, want)
	}
	if img.ID != "sha256:feed" || img.Digest != "sha256:beef" || !reflect.DeepEqual(img.RepoTags, []string{"example.test/app:v1"}) {
		t.Errorf("image %+v", img)
	}
	if len(msgs) != 2 || msgs[0].Status != api.StatusDownloading || msgs[1].ProgressDetail.Current != 3 {
		t.Errorf("progress messages %+v", msgs)
	}
}

// A pull that fails after its stream began ends with an error message; the
// client returns it classified by its code, as if it came before.
func TestPullImageErrorMidStream(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stream(w,
			api.JSONMessage{Status: api.StatusDownloading, ID: "sha256:0123456789ab", ProgressDetail: &api.ProgressDetail{Current: 1, Total: 3}},
			api.JSONMessage{Error: "pulling x: storing blob: corrupt content", ErrorDetail: &api.ErrorDetail{Code: 400, Message: "pulling x: storing blob: corrupt content"}},
			api.JSONMessage{Status: "never read"},
		)
	}))
	n := 0
	_, err := c.PullImage(context.Background(), "x", client.PullOptions{Progress: func(api.JSONMessage) { n++ }})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 400 || !errors.Is(err, client.ErrInvalidArgument) || err.Error() != "pulling x: storing blob: corrupt content" {
		t.Fatalf("err = %#v, want the stream's error as a 400", err)
	}
	if n != 1 {
		t.Errorf("progress got %d messages, want the 1 before the error", n)
	}
}

func TestPullImageErrorBeforeStream(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusBadRequest, api.Error{Message: "pulling x: unauthorized"})
	}))
	_, err := c.Pull(context.Background(), "x", false)
	if !errors.Is(err, client.ErrInvalidArgument) || err.Error() != "pulling x: unauthorized" {
		t.Fatalf("err = %v", err)
	}
}

func TestPullImageStreamWithoutResult(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stream(w, api.JSONMessage{Status: api.StatusDownloading, ID: "sha256:0123456789ab", ProgressDetail: &api.ProgressDetail{Current: 1}})
	}))
	if _, err := c.Pull(context.Background(), "x", false); err == nil || !strings.Contains(err.Error(), "without the image") {
		t.Fatalf("err = %v, want a stream that ended early", err)
	}
}

func TestPushImage(t *testing.T) {
	var got api.PushRequest
	final := true
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&got)
		msgs := []any{api.JSONMessage{Status: api.StatusPushing, ProgressDetail: &api.ProgressDetail{Current: 1, Total: 2}}}
		if final {
			msgs = append(msgs, api.JSONMessage{Status: api.StatusPushed})
		}
		stream(w, msgs...)
	}))
	var msgs []api.JSONMessage
	if err := c.PushImage(context.Background(), "app:v1", "example.test/app:v1", client.PushOptions{Progress: func(m api.JSONMessage) { msgs = append(msgs, m) }}); err != nil {
		t.Fatal(err)
	}
	if got.Src != "app:v1" || got.Dst != "example.test/app:v1" || len(msgs) != 2 {
		t.Errorf("request %+v, messages %+v", got, msgs)
	}
	final = false
	if err := c.Push(context.Background(), "app:v1", "example.test/app:v1", false); err == nil {
		t.Errorf("a push stream without its end succeeded")
	}
}

func TestLoadImagesSendsTheArchive(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/images/load" || r.URL.Query().Get("name") != "app.tar" ||
			string(b) != "tar bytes" || r.Header.Get("Content-Type") != "application/x-tar" {
			t.Errorf("request %s %s?%s %q (%s)", r.Method, r.URL.Path, r.URL.RawQuery, b, r.Header.Get("Content-Type"))
		}
		writeJSON(w, http.StatusOK, []api.Image{{ID: "sha256:feed", RepoTags: []string{"example.test/app:v1"}}})
	}))
	imgs, err := c.LoadImages(context.Background(), strings.NewReader("tar bytes"), "app.tar")
	if err != nil || len(imgs) != 1 || imgs[0].ID != "sha256:feed" {
		t.Fatalf("LoadImages = %+v, %v", imgs, err)
	}
}

func TestRemoveImages(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case r.Method != http.MethodDelete || r.URL.Path != "/v1/images":
			t.Errorf("request %s %s", r.Method, r.URL.Path)
		case q.Get("ref") == "used" && q.Get("force") != "1":
			writeJSON(w, http.StatusConflict, api.Error{Message: "image used (0123) is used by VM web: remove the VM first, or use -f: conflict"})
		default:
			writeJSON(w, http.StatusOK, []api.ImageDeleted{{Untagged: "example.test/used:latest"}, {Deleted: "sha256:feed"}})
		}
	}))
	ctx := context.Background()
	if err := c.RemoveImage(ctx, "used", false); !errors.Is(err, client.ErrConflict) || !strings.Contains(err.Error(), "web") {
		t.Errorf("RemoveImage of a used image = %v, want ErrConflict naming the VM", err)
	}
	got, err := c.RemoveImages(ctx, "used", true)
	if want := []api.ImageDeleted{{Untagged: "example.test/used:latest"}, {Deleted: "sha256:feed"}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("RemoveImages -f = %+v, %v; want %+v", got, err, want)
	}
}

func TestPruneImagesAndLogout(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method + " " + r.URL.Path {
		case "POST /v1/images/prune":
			writeJSON(w, http.StatusOK, api.PruneResponse{SpaceReclaimed: 42})
		case "DELETE /v1/auth":
			if r.URL.Query().Get("registry") != "example.test" {
				t.Errorf("logout query %q", r.URL.RawQuery)
			}
			w.WriteHeader(http.StatusNoContent)
		default:
			t.Errorf("request %s %s", r.Method, r.URL.Path)
		}
	}))
	if n, err := c.PruneImages(context.Background()); n != 42 || err != nil {
		t.Errorf("PruneImages = %d, %v", n, err)
	}
	if err := c.Logout(context.Background(), "example.test"); err != nil {
		t.Errorf("Logout: %v", err)
	}
}
