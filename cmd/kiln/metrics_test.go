package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// scrape GETs url through c and parses it with Prometheus' own parser.
func scrape(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET %s: %s, Content-Type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: the metrics do not parse: %v", url, err)
	}
	return fams
}

// metricValue is the counter or gauge of family name whose labels include
// want (name, value pairs); -1 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			ok = ok && labels[want[i]] == want[i+1]
		}
		if !ok {
			continue
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	return -1
}

// TestMetrics: /metrics on the API socket, read by Prometheus' parser,
// counts the VMs by state, their starts, exits by code, boot times and
// the API's requests; --metrics-addr serves the same on TCP and nothing
// of the API, and an address in use stops the daemon before it makes
// anything.
func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.run("--name", "three", e.hello(), "-exit", "3"); r.code != 3 {
		t.Fatalf("run -exit 3:\n%s", r)
	}
	if r := e.run("--name", "zero", e.hello()); r.code != 0 {
		t.Fatalf("run:\n%s", r)
	}
	sock := filepath.Join(e.root, "run", "kiln.sock")
	unix := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	fams := scrape(t, unix, "http://kiln/metrics")
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"kiln_vms", []string{"state", "exited"}, 2},
		{"kiln_vm_exits_total", []string{"code", "3"}, 1},
		{"kiln_vm_exits_total", []string{"code", "0"}, 1},
		{"kiln_vm_events_total", []string{"event", "created"}, 2},
		{"kiln_api_requests_total", []string{"method", "POST", "route", "POST /v1/vms/{ref}/start"}, 2},
	} {
		if got := metricValue(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if s := metricValue(fams, "kiln_vm_starts_total", "from", "boot") + metricValue(fams, "kiln_vm_starts_total", "from", "template"); s != 2 {
		t.Errorf("kiln_vm_starts_total, boot and template together = %v, want 2", s)
	}
	if h := fams["kiln_vm_boot_seconds"]; h == nil || h.Metric[0].GetHistogram().GetSampleCount() != 2 || h.Metric[0].GetHistogram().GetSampleSum() <= 0 {
		t.Errorf("kiln_vm_boot_seconds: want two boots observed: %v", h)
	}
	// A running VM: its QEMU's CPU time and PSS, and its guest's memory.
	ok(t, "run -d", e.run("-d", "--name", "idle", "--memory", "128m", e.hello(), "-sleep", "1h"))
	e.awaitLog("idle", "hello", 1)
	fams = scrape(t, unix, "http://kiln/metrics")
	if v := metricValue(fams, "kiln_vm_host_pss_bytes", "vm", "idle"); v < 8<<20 || v > 1<<30 {
		t.Errorf("kiln_vm_host_pss_bytes{vm=idle} = %v, want a QEMU's (tens of MiB)", v)
	}
	if v := metricValue(fams, "kiln_vm_host_cpu_seconds_total", "vm", "idle"); v <= 0 {
		t.Errorf("kiln_vm_host_cpu_seconds_total{vm=idle} = %v, want above 0 (it booted)", v)
	}
	total, used := metricValue(fams, "kiln_vm_guest_memory_bytes", "vm", "idle", "kind", "total"), metricValue(fams, "kiln_vm_guest_memory_bytes", "vm", "idle", "kind", "used")
	if total < 64<<20 || total > 128<<20 || used <= 0 || used >= total {
		t.Errorf("kiln_vm_guest_memory_bytes{vm=idle}: total %v, used %v; want a 128 MiB guest's", total, used)
	}
	if metricValue(fams, "kiln_vm_host_pss_bytes", "vm", "three") != -1 {
		t.Error("an exited VM has a PSS sample")
	}
	ok(t, "rm", e.kiln("rm", "-f", "idle"))

	// --metrics-addr: the daemon again, serving /metrics on loopback too.
	e.stopDaemon()
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	d := exec.Command(filepath.Join(binDir, "kiln"), "--root", e.root, "daemon", "--metrics-addr", addr)
	d.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait() })
	for deadline := time.Now().Add(30 * time.Second); e.daemonPID() != d.Process.Pid; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the daemon with --metrics-addr did not start")
		}
	}
	fams = scrape(t, http.DefaultClient, "http://"+addr+"/metrics")
	if got := metricValue(fams, "kiln_vms", "state", "exited"); got != 2 {
		t.Errorf("over --metrics-addr: kiln_vms{state=exited} = %v, want 2", got)
	}
	if resp, err := http.Get("http://" + addr + "/v1/vms"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the metrics address serves the API: GET /v1/vms = %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// An address in use: exit 125, the address named, no root made.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other := filepath.Join(t.TempDir(), "other")
	r := e.kiln("--root", other, "daemon", "--metrics-addr", l.Addr().String())
	if r.code != 125 || !strings.Contains(r.stderr, "--metrics-addr "+l.Addr().String()) || !strings.Contains(r.stderr, "address already in use") {
		t.Errorf("daemon --metrics-addr in use: want exit 125 naming the address:\n%s", r)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("a daemon that could not start made its root %s: %v", other, err)
	}
}

// freePort returns a loopback TCP port free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
