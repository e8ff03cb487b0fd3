// Package metrics is what kiln's daemon tells Prometheus: VMs by state,
// lifecycle events (starts by how they started, exits by code, restarts,
// health transitions), the guests' boot times and the API's requests, in
// Prometheus' text exposition format (0.0.4), written here rather than
// through a client library: a handful of counters, one gauge family and
// one histogram.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ContentType is the text exposition format's.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// bootBuckets bound kiln_vm_boot_seconds (a guest's uptime when its
// program started): a restored start takes a fraction of a second, a
// cold boot under TCG about one.
var bootBuckets = []float64{0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30}

// Metrics holds the daemon's counters. Its methods are safe for
// concurrent use.
type Metrics struct {
	// vms counts the VMs by state at each scrape.
	vms func() map[string]int

	mu       sync.Mutex
	events   map[string]float64    // action
	starts   map[string]float64    // boot or template
	exits    map[string]float64    // exit code
	health   map[string]float64    // healthy, unhealthy, starting
	requests map[[3]string]float64 // method, route, code
	pulls    map[string]float64    // ok, error
	pullB    float64               // bytes pulled
	boot     histogram

	// perVM samples each running VM at a scrape (SetVMs).
	perVM func() []VMSample
}

// VMSample is what a scrape reads of one running VM: its QEMU process on
// the host, and its guest's own view of its memory (Guest false when the
// guest did not answer in time).
type VMSample struct {
	Name           string
	HostCPUSeconds float64
	HostPSSBytes   uint64
	Guest          bool
	GuestMemTotal  uint64
	GuestMemUsed   uint64
}

// SetVMs sets how a scrape samples the running VMs.
func (m *Metrics) SetVMs(f func() []VMSample) {
	m.mu.Lock()
	m.perVM = f
	m.mu.Unlock()
}

// Pulled records an image pull that ended ("ok" or "error") and the
// bytes it transferred.
func (m *Metrics) Pulled(result string, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pulls[result]++
	m.pullB += float64(bytes)
}

type histogram struct {
	counts []uint64 // per bucket, not cumulative
	sum    float64
	n      uint64
}

// New returns empty metrics; vms counts the VMs by state when scraped.
func New(vms func() map[string]int) *Metrics {
	return &Metrics{vms: vms, events: map[string]float64{}, starts: map[string]float64{}, exits: map[string]float64{},
		health: map[string]float64{}, requests: map[[3]string]float64{}, pulls: map[string]float64{}, boot: histogram{counts: make([]uint64, len(bootBuckets))}}
}

// Event records one of the supervisor's lifecycle events: its action
// ("started", "died", "health_status: healthy", …) and attributes
// ("exitCode=3", "from=template").
func (m *Metrics) Event(action, attrs string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st, ok := strings.CutPrefix(action, "health_status: "); ok {
		m.health[st]++
		return
	}
	m.events[action]++
	a := map[string]string{}
	for _, kv := range strings.Split(attrs, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			a[k] = v
		}
	}
	switch action {
	case "died":
		if c, ok := a["exitCode"]; ok {
			m.exits[exitLabel(c)]++
		}
	case "started", "restarted":
		from := "boot"
		if a["from"] == "template" {
			from = "template"
		}
		m.starts[from]++
	}
}

// exitLabel is the code label of an exit code. The code comes from the
// guest (kiln-init's exit record), which may be hostile: anything but a
// shell's 0-255 is "other", so that a guest cannot grow the family's
// label values past 257.
func exitLabel(code string) string {
	if n, err := strconv.Atoi(code); err == nil && n >= 0 && n <= 255 {
		return strconv.Itoa(n)
	}
	return "other"
}

// Booted records a guest's uptime, in seconds, when its program started.
func (m *Metrics) Booted(uptime float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, b := range bootBuckets {
		if uptime <= b {
			m.boot.counts[i]++
			break
		}
	}
	m.boot.sum += uptime
	m.boot.n++
}

// Instrument counts the requests mux answers, by method, route and status
// code. The route is the pattern the mux matched (r.Pattern, set by
// http.ServeMux): a bounded set of label values, unlike paths.
func (m *Metrics) Instrument(mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		m.mu.Lock()
		m.requests[[3]string{r.Method, route, strconv.Itoa(sw.code)}]++
		m.mu.Unlock()
	})
}

// statusWriter notes the status code written; it passes flushes and
// hijacks (streams, exec sessions) through.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("the response cannot be hijacked")
	}
	w.code = http.StatusSwitchingProtocols
	return hj.Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		_ = m.Write(w)
	})
}

// Write writes the metrics in the text exposition format.
func (m *Metrics) Write(w io.Writer) error {
	var states map[string]int
	if m.vms != nil {
		states = m.vms()
	}
	m.mu.Lock()
	perVM := m.perVM
	m.mu.Unlock()
	var vms []VMSample
	if perVM != nil {
		vms = perVM()
	}
	bw := bufio.NewWriter(w)
	family(bw, "kiln_vms", "gauge", "VMs by state (created, running, exited, …).")
	for _, st := range sortedKeys(states) {
		sample(bw, "kiln_vms", float64(states[st]), "state", st)
	}
	m.mu.Lock()
	family(bw, "kiln_vm_events_total", "counter", "VM lifecycle events by event (created, started, died, restarted, stopped, killed, removed, …).")
	for _, k := range sortedKeys(m.events) {
		sample(bw, "kiln_vm_events_total", m.events[k], "event", k)
	}
	family(bw, "kiln_vm_starts_total", "counter", "VM runs started, by how: a booted kernel, or restored from a template.")
	for _, from := range []string{"boot", "template"} {
		sample(bw, "kiln_vm_starts_total", m.starts[from], "from", from)
	}
	family(bw, "kiln_vm_exits_total", "counter", "VM runs ended, by the program's exit code.")
	for _, k := range sortedKeys(m.exits) {
		sample(bw, "kiln_vm_exits_total", m.exits[k], "code", k)
	}
	family(bw, "kiln_vm_health_transitions_total", "counter", "Health status changes of VMs with a health check, by the status entered.")
	for _, k := range sortedKeys(m.health) {
		sample(bw, "kiln_vm_health_transitions_total", m.health[k], "status", k)
	}
	family(bw, "kiln_vm_boot_seconds", "histogram", "A guest's uptime when its program started.")
	var cum uint64
	for i, b := range bootBuckets {
		cum += m.boot.counts[i]
		sample(bw, "kiln_vm_boot_seconds_bucket", float64(cum), "le", strconv.FormatFloat(b, 'g', -1, 64))
	}
	sample(bw, "kiln_vm_boot_seconds_bucket", float64(m.boot.n), "le", "+Inf")
	sample(bw, "kiln_vm_boot_seconds_sum", m.boot.sum)
	sample(bw, "kiln_vm_boot_seconds_count", float64(m.boot.n))
	family(bw, "kiln_vm_host_cpu_seconds_total", "counter", "CPU time the running VM's QEMU used on the host, by VM name.")
	for _, v := range vms {
		sample(bw, "kiln_vm_host_cpu_seconds_total", v.HostCPUSeconds, "vm", v.Name)
	}
	family(bw, "kiln_vm_host_pss_bytes", "gauge", "Proportional set size of the running VM's QEMU on the host, by VM name.")
	for _, v := range vms {
		sample(bw, "kiln_vm_host_pss_bytes", float64(v.HostPSSBytes), "vm", v.Name)
	}
	family(bw, "kiln_vm_guest_memory_bytes", "gauge", "The guest's memory as its kernel counts it, by VM name and kind (total, used: total less available).")
	for _, v := range vms {
		if v.Guest {
			sample(bw, "kiln_vm_guest_memory_bytes", float64(v.GuestMemTotal), "vm", v.Name, "kind", "total")
			sample(bw, "kiln_vm_guest_memory_bytes", float64(v.GuestMemUsed), "vm", v.Name, "kind", "used")
		}
	}
	family(bw, "kiln_image_pulls_total", "counter", "Image pulls ended, by result (ok, error).")
	for _, k := range []string{"ok", "error"} {
		sample(bw, "kiln_image_pulls_total", m.pulls[k], "result", k)
	}
	family(bw, "kiln_image_pull_bytes_total", "counter", "Bytes of blobs image pulls transferred (blobs already stored are not counted).")
	sample(bw, "kiln_image_pull_bytes_total", m.pullB)
	family(bw, "kiln_api_requests_total", "counter", "API requests answered, by method, route and status code.")
	keys := make([][3]string, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		return a[1] < b[1] || a[1] == b[1] && (a[0] < b[0] || a[0] == b[0] && a[2] < b[2])
	})
	for _, k := range keys {
		sample(bw, "kiln_api_requests_total", m.requests[k], "method", k[0], "route", k[1], "code", k[2])
	}
	m.mu.Unlock()
	return bw.Flush()
}

func family(w io.Writer, name, typ, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// sample writes one sample; labels are name, value pairs.
func sample(w io.Writer, name string, v float64, labels ...string) {
	io.WriteString(w, name)
	if len(labels) > 0 {
		io.WriteString(w, "{")
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				io.WriteString(w, ",")
			}
			fmt.Fprintf(w, "%s=\"%s\"", labels[i], escape(labels[i+1]))
		}
		io.WriteString(w, "}")
	}
	fmt.Fprintf(w, " %s\n", strconv.FormatFloat(v, 'g', -1, 64))
}

var escaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escape(s string) string { return escaper.Replace(s) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
