package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// composeProject is the two-service project: web (a published
// port, a health check) depends on db being healthy; db serves a file
// from its named volume, with a variable from an env_file; web has an
// interpolated variable. Both boot the test kernel through x-kiln.
const composeProject = `
x-vm: &vm
  kernel: %s
services:
  web:
    image: kiln-test/box:compose
    command: httpd -f -p 80 -h /www
    ports: ["127.0.0.1:18193:80"]
    environment:
      - GREETING=${GREETING}
    depends_on:
      db: {condition: service_healthy}
    healthcheck: {test: ["CMD", "wget", "-qO-", "http://127.0.0.1/"], interval: 1s, retries: 30}
    cap_add: [NET_ADMIN]
    x-kiln: *vm
  db:
    image: kiln-test/box:compose
    command: ["sh", "-c", "echo $$PASSWORD > /data/pw && exec httpd -f -p 6379 -h /data"]
    env_file: [db.env]
    volumes: ["data:/data"]
    healthcheck: {test: ["CMD", "wget", "-qO-", "http://127.0.0.1:6379/pw"], interval: 1s, retries: 30}
    x-kiln: *vm
volumes:
  data: {}
`

// TestCompose runs a project with kiln compose, in a network namespace of
// the test's: up -d in dependency order, a service reaching another by
// name, ps with both healthy, a second up that changes nothing, a changed
// service recreated alone, and down -v leaving no VM, network or volume.
func TestCompose(t *testing.T) {
	t.Parallel()
	e := newNetEnv(t)
	e.loadImage("kiln-test/box:compose", dockerTestImage(t))
	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(composeProject, e.kernel)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "db.env"), []byte("PASSWORD=s3cret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kc := func(greeting string, args ...string) result {
		t.Helper()
		e.extraEnv = []string{"GREETING=" + greeting}
		return e.kiln(append([]string{"compose", "-f", file, "-p", "kc"}, args...)...)
	}
	t.Cleanup(func() { kc("x", "down", "-v") })

	up := ok(t, "compose up -d", kc("hello", "up", "-d"))
	if !strings.Contains(up.stderr, "key cap_add is not supported by kiln and is ignored") {
		t.Errorf("no warning for cap_add:\n%s", up.stderr)
	}
	// db became healthy before web was made.
	healthy, created := strings.Index(up.stderr, "kc-db-1  Healthy"), strings.Index(up.stderr, "kc-web-1  Created")
	if healthy < 0 || created < 0 || healthy > created {
		t.Errorf("up did not wait for db to be healthy before making web:\n%s", up.stderr)
	}
	if r := kc("hello", "exec", "-T", "web", "wget", "-qO-", "http://db:6379/pw"); r.code != 0 || r.stdout != "s3cret\n" {
		t.Errorf("web reaching db by its service name (and db's env_file):\n%s", r)
	}
	if r := kc("hello", "exec", "-T", "web", "sh", "-c", "echo $GREETING"); r.stdout != "hello\n" {
		t.Errorf("interpolated variable: %q", r.stdout)
	}
	if out, err := e.helper("get", "http://127.0.0.1:18193/"); err != nil || out != "hello from a kiln VM\n" {
		t.Errorf("web's published port: %q, %v", out, err)
	}
	// ps: both healthy, eventually (web's check runs every second).
	var ps result
	for i := 0; i < 60; i++ {
		ps = ok(t, "compose ps", kc("hello", "ps"))
		if regexp.MustCompile(`kc-db-1 .*\(healthy\)`).MatchString(ps.stdout) && regexp.MustCompile(`kc-web-1 .*\(healthy\).*127.0.0.1:18193->80/tcp`).MatchString(ps.stdout) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(ps.stdout, "kc-web-1") || strings.Count(ps.stdout, "(healthy)") != 2 {
		t.Errorf("compose ps: want both healthy:\n%s", ps.stdout)
	}
	// Its network and volume carry compose's labels too.
	if r := ok(t, "network ls", e.kiln("network", "ls", "-q", "--filter", "label=com.docker.compose.project=kc")); strings.TrimSpace(r.stdout) != "kc_default" {
		t.Errorf("kiln network ls --filter label=com.docker.compose.project=kc: %q", r.stdout)
	}
	if r := ok(t, "volume ls", e.kiln("volume", "ls", "-q", "--filter", "label=com.docker.compose.volume=data")); strings.TrimSpace(r.stdout) != "kc_data" {
		t.Errorf("kiln volume ls --filter label=com.docker.compose.volume=data: %q", r.stdout)
	}
	// kiln ps finds them by compose's labels.
	if r := ok(t, "ps --filter label", e.kiln("ps", "-q", "--filter", "label=com.docker.compose.project=kc")); len(strings.Fields(r.stdout)) != 2 {
		t.Errorf("kiln ps --filter label=com.docker.compose.project=kc: %q", r.stdout)
	}
	ids := func() string {
		return strings.TrimSpace(ok(t, "ps", e.kiln("ps", "-a", "--format", "{{.Name}}={{.ID}}", "--filter", "label=com.docker.compose.project=kc")).stdout)
	}
	before := ids()
	// up again, unchanged: nothing made or replaced.
	again := ok(t, "compose up -d again", kc("hello", "up", "-d"))
	if strings.Contains(again.stderr, "Created") || strings.Contains(again.stderr, "Recreate") || ids() != before {
		t.Errorf("a second up -d changed something:\n%s\nVMs before %s, after %s", again.stderr, before, ids())
	}
	// A changed variable recreates web alone.
	changed := ok(t, "compose up -d changed", kc("changed", "up", "-d"))
	if !strings.Contains(changed.stderr, "kc-web-1  Recreate") || strings.Contains(changed.stderr, "kc-db-1  Recreate") {
		t.Errorf("a change of web's environment: want web alone recreated:\n%s", changed.stderr)
	}
	after := ids()
	dbID := regexp.MustCompile(`kc-db-1=(\w+)`)
	if dbID.FindString(after) != dbID.FindString(before) || after == before {
		t.Errorf("VMs before %s, after %s: want db kept and web replaced", before, after)
	}
	if r := kc("changed", "exec", "-T", "web", "sh", "-c", "echo $GREETING"); r.stdout != "changed\n" {
		t.Errorf("recreated web's variable: %q", r.stdout)
	}
	// logs of one service, prefixed.
	if r := ok(t, "compose logs", kc("changed", "logs", "db")); strings.Contains(r.stdout, "kc-web-1") {
		t.Errorf("compose logs db shows web's:\n%s", r.stdout)
	}
	ok(t, "compose down -v", kc("changed", "down", "-v"))
	if r := e.kiln("ps", "-a", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("VMs left after down: %q", r.stdout)
	}
	if r := e.kiln("network", "ls", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("networks left after down: %q", r.stdout)
	}
	if r := e.kiln("volume", "ls", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("volumes left after down -v: %q", r.stdout)
	}

	// Bad files: compose-go's or kiln's message, exit 125, nothing made.
	for name, body := range map[string]string{
		"unknown key":      "services:\n  a:\n    image: x\n    colour: red\n",
		"bad port":         "services:\n  a:\n    image: x\n    ports: [\"99999:80\"]\n",
		"cycle":            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n",
		"missing env_file": "services:\n  a: {image: x, env_file: [nope.env]}\n",
		"privileged":       "services:\n  a: {image: x, privileged: true}\n",
	} {
		bad := filepath.Join(t.TempDir(), "compose.yaml")
		if err := os.WriteFile(bad, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		r := e.kiln("compose", "-f", bad, "up", "-d")
		if r.code != 125 || !strings.HasPrefix(r.stderr, "kiln: ") {
			t.Errorf("compose up of a file with a %s: want exit 125 and a message:\n%s", name, r)
		}
	}
	if r := e.kiln("ps", "-a", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("VMs made by bad files: %q", r.stdout)
	}
	if r := e.kiln("network", "ls", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("networks made by bad files: %q", r.stdout)
	}
}
