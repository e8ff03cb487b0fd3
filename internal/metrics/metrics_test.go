package metrics

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// parse reads m's exposition with Prometheus' own parser, which refuses
// anything malformed.
func parse(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	if err := m.Write(&b); err != nil {
		t.Fatal(err)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(&b)
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, b.String())
	}
	return fams
}

// value is the value of the sample of family name whose labels include
// all of want (name, value pairs); -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == want[i] && l.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}

func TestMetricsParseAndCount(t *testing.T) {
	m := New(func() map[string]int { return map[string]int{"running": 2, "exited": 1, `we"ird\`: 1} })
	m.Event("created", "")
	m.Event("started", "")
	m.Event("started", "from=template")
	m.Event("restarted", "from=template")
	m.Event("died", "exitCode=3")
	m.Event("died", "exitCode=3")
	m.Event("died", "exitCode=0")
	// A hostile guest's exit records: no new label value each.
	m.Event("died", "exitCode=99999")
	m.Event("died", "exitCode=-4")
	m.Event("died", "exitCode=0003")
	m.Event("health_status: healthy", "")
	m.Booted(0.4)
	m.Booted(1.2)
	m.Booted(100)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/{ref}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) })
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	h := m.Instrument(mux)
	for _, path := range []string{"/v1/vms/x", "/v1/vms/y", "/v1/ping"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", path, nil))
	}

	fams := parse(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"kiln_vms", []string{"state", "running"}, 2},
		{"kiln_vms", []string{"state", `we"ird\`}, 1},
		{"kiln_vm_events_total", []string{"event", "died"}, 6},
		{"kiln_vm_events_total", []string{"event", "created"}, 1},
		{"kiln_vm_starts_total", []string{"from", "boot"}, 1},
		{"kiln_vm_starts_total", []string{"from", "template"}, 2},
		{"kiln_vm_exits_total", []string{"code", "3"}, 3},
		{"kiln_vm_exits_total", []string{"code", "0"}, 1},
		{"kiln_vm_exits_total", []string{"code", "other"}, 2},
		{"kiln_vm_health_transitions_total", []string{"status", "healthy"}, 1},
		{"kiln_api_requests_total", []string{"route", "GET /v1/vms/{ref}", "code", "404"}, 2},
		{"kiln_api_requests_total", []string{"route", "GET /v1/ping", "code", "200"}, 1},
	} {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	hist := fams["kiln_vm_boot_seconds"].GetMetric()[0].GetHistogram()
	if hist.GetSampleCount() != 3 || hist.GetSampleSum() != 101.6 {
		t.Errorf("boot histogram: count %d sum %v, want 3 and 101.6", hist.GetSampleCount(), hist.GetSampleSum())
	}
	for _, b := range hist.Bucket {
		want := map[float64]uint64{0.25: 0, 0.5: 1, 1: 1, 1.5: 2, 30: 2}
		if w, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
			t.Errorf("boot bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
	}
}

func TestPerVMAndPullMetrics(t *testing.T) {
	m := New(nil)
	m.SetVMs(func() []VMSample {
		return []VMSample{
			{Name: "web", HostCPUSeconds: 1.5, HostPSSBytes: 40 << 20, Guest: true, GuestMemTotal: 128 << 20, GuestMemUsed: 30 << 20},
			{Name: `we"ird`, HostCPUSeconds: 0.25, HostPSSBytes: 1 << 20},
		}
	})
	m.Pulled("ok", 1000)
	m.Pulled("ok", 500)
	m.Pulled("error", 7)
	fams := parse(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"kiln_vm_host_cpu_seconds_total", []string{"vm", "web"}, 1.5},
		{"kiln_vm_host_pss_bytes", []string{"vm", "web"}, 40 << 20},
		{"kiln_vm_guest_memory_bytes", []string{"vm", "web", "kind", "used"}, 30 << 20},
		{"kiln_vm_guest_memory_bytes", []string{"vm", "web", "kind", "total"}, 128 << 20},
		{"kiln_vm_host_pss_bytes", []string{"vm", `we"ird`}, 1 << 20},
		{"kiln_vm_guest_memory_bytes", []string{"vm", `we"ird`}, -1}, // its guest did not answer
		{"kiln_image_pulls_total", []string{"result", "ok"}, 2},
		{"kiln_image_pulls_total", []string{"result", "error"}, 1},
		{"kiln_image_pull_bytes_total", nil, 1507},
	} {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
