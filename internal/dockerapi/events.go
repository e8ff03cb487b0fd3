package dockerapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"kiln.dev/kiln/api"
)

func (s *Server) eventRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /events", s.handle(s.events))
}

// dockerActions are docker's names for kiln's VM events.
var dockerActions = map[string]events.Action{
	"created": events.ActionCreate, "started": events.ActionStart, "died": events.ActionDie,
	"restarted": events.ActionRestart, "stopped": events.ActionStop, "killed": events.ActionKill,
	"removed": events.ActionDestroy, "pause": events.ActionPause, "unpause": events.ActionUnPause,
	"rename": events.ActionRename, "checkpoint": events.ActionCheckpoint,
}

// labelCache remembers VMs' labels and images for events' attributes; a
// removed VM's are what they were when last seen.
type labelCache struct {
	mu sync.Mutex
	m  map[string]api.VM
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	args, err := filters.FromJSON(q.Get("filters"))
	if err != nil {
		return refuse("invalid filters %q: %v", q.Get("filters"), err)
	}
	if err := args.Validate(map[string]bool{"type": true, "event": true, "container": true, "label": true, "image": true}); err != nil {
		return refuse("%v", err)
	}
	var since, until string
	if v := q.Get("since"); v != "" {
		t, err := parseUnixTime(v)
		if err != nil {
			return refuse("invalid since %q: want Unix seconds", v)
		}
		since = t.Format(time.RFC3339Nano)
	}
	if v := q.Get("until"); v != "" {
		t, err := parseUnixTime(v)
		if err != nil {
			return refuse("invalid until %q: want Unix seconds", v)
		}
		until = t.Format(time.RFC3339Nano)
	}
	// Only containers have events here; a filter on another type matches
	// nothing.
	if args.Contains("type") && !args.ExactMatch("type", string(events.ContainerEventType)) {
		return s.noEvents(w, r, until != "")
	}
	cache := &labelCache{m: map[string]api.VM{}}
	if vms, err := s.kiln.List(r.Context()); err == nil {
		for _, v := range vms {
			cache.m[v.ID] = v
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	enc := json.NewEncoder(w)
	_ = s.kiln.Events(r.Context(), since, until, func(e api.Event) error {
		action, ok := dockerActions[e.Action]
		if !ok {
			action = events.Action(e.Action)
		}
		v := cache.lookup(r.Context(), s, e.ID)
		attrs := map[string]string{"name": e.Name}
		image := v.Config.Image
		if image == "" {
			image = v.Config.Program
		}
		if image != "" {
			attrs["image"] = image
		}
		for k, val := range v.Config.Labels {
			attrs[k] = val
		}
		for k, val := range e.Attrs {
			attrs[k] = val
		}
		if e.Action == "removed" {
			cache.forget(e.ID)
		}
		m := events.Message{
			Status: string(action), ID: e.ID, From: image, Type: events.ContainerEventType, Action: action,
			Actor: events.Actor{ID: e.ID, Attributes: attrs}, Scope: "local",
			Time: e.Time.Unix(), TimeNano: e.Time.UnixNano(),
		}
		if !matchEvent(args, m, v) {
			return nil
		}
		if err := enc.Encode(m); err != nil {
			return err
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		return nil
	})
	return nil
}

// noEvents answers an event stream that can have none: at once when it
// is bounded, else open until the client goes.
func (s *Server) noEvents(w http.ResponseWriter, r *http.Request, bounded bool) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if bounded {
		return nil
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	<-r.Context().Done()
	return nil
}

func (c *labelCache) lookup(ctx context.Context, s *Server, id string) api.VM {
	c.mu.Lock()
	v, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return v
	}
	v, err := s.kiln.Inspect(ctx, id)
	if err != nil {
		return api.VM{ID: id}
	}
	c.mu.Lock()
	c.m[id] = v
	c.mu.Unlock()
	return v
}

func (c *labelCache) forget(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

func matchEvent(args filters.Args, m events.Message, v api.VM) bool {
	if args.Contains("event") && !args.ExactMatch("event", string(m.Action)) {
		return false
	}
	if args.Contains("container") && !matchAny(args.Get("container"), func(f string) bool {
		return f == m.Actor.Attributes["name"] || strings.HasPrefix(m.ID, f)
	}) {
		return false
	}
	if args.Contains("image") && !args.ExactMatch("image", m.Actor.Attributes["image"]) {
		return false
	}
	return args.MatchKVList("label", v.Config.Labels)
}
