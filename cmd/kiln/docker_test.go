package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	errdefsDocker "github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"kiln.dev/kiln/internal/daemon"
)

// dockerApplets are linked to busybox in the docker tests' image.
var dockerApplets = []string{"sh", "cat", "echo", "sleep", "httpd", "hostname", "seq", "ls", "mkdir", "id", "true", "false", "wget"}

// dockerEnv is a kiln root whose daemon serves the Docker API, and the
// docker CLI found on this host pointed at it.
type dockerEnv struct {
	*env
	docker string
	config string
}

func newDockerEnv(t *testing.T) *dockerEnv {
	t.Helper()
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no docker CLI on this host: apt-get install docker.io (only its CLI is used; its daemon is not started)")
	}
	e := newEnv(t)
	ok(t, "kernel import", e.kiln("kernel", "import", e.kernel))
	ok(t, "daemon start", e.kiln("ps"))
	return &dockerEnv{env: e, docker: docker, config: t.TempDir()}
}

// cli runs the docker CLI against the root's Docker API socket.
func (d *dockerEnv) cli(stdin string, args ...string) result {
	d.t.Helper()
	return runDockerTool(d.t, d.root, d.config, d.home, "", nil, stdin, d.docker, args...)
}

// runDockerTool runs a docker client (the CLI, docker-compose) in dir
// against root's Docker API socket, with its own configuration and home,
// to its end (bounded), with env added to its environment.
func runDockerTool(t *testing.T, root, config, home, dir string, env []string, stdin, tool string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+daemon.DockerSocketPath(root),
		"DOCKER_CONFIG="+config, "HOME="+home, "DOCKER_CLI_HINTS=false")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, isExit := err.(*exec.ExitError); isExit {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s %v: %v", tool, args, err)
	}
	return result{code, out.String(), errb.String()}
}

func (d *dockerEnv) ok(args ...string) string {
	d.t.Helper()
	return strings.TrimSpace(ok(d.t, "docker "+strings.Join(args, " "), d.cli("", args...)).stdout)
}

// dockerTestImage is busybox with the applets the docker tests use, a
// page for its httpd, and a label.
func dockerTestImage(t *testing.T) v1.Image {
	t.Helper()
	entries := append(busyboxBin(t, dockerApplets),
		dir("etc/", 0o755),
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
		file("etc/group", "root:x:0:\n", 0o644),
		dir("www/", 0o755),
		file("www/index.html", "hello from a kiln VM\n", 0o644),
		dir("tmp/", 0o1777),
	)
	return testImage(t, func(c *v1.Config) {
		c.Cmd = []string{"/bin/sh", "-c", "echo default-cmd"}
		c.Labels = map[string]string{"org.example.from": "image"}
		c.ExposedPorts = map[string]struct{}{"80/tcp": {}}
	}, layerTar(t, entries...))
}

// TestDockerCLI drives a kiln root with the docker CLI through the Docker
// API socket: pull from a loopback registry, run attached and detached,
// ps, logs, exec (with stdin), cp, inspect templates, stop, rm, volumes,
// and the fields kiln refuses.
func TestDockerCLI(t *testing.T) {
	t.Parallel()
	d := newDockerEnv(t)
	reg := newTestRegistry(t)
	ref := reg.push(t, "kiln-test/box:1", dockerTestImage(t))

	// docker login goes to the daemon, which keeps the credentials for its
	// pulls; then docker pull shows the daemon's progress.
	ok(t, "docker login", d.cli(regPass+"\n", "login", reg.host, "-u", regUser, "--password-stdin"))
	pull := ok(t, "docker pull", d.cli("", "pull", ref))
	if !strings.Contains(pull.stdout, "Digest: sha256:") || !strings.Contains(pull.stdout, "Downloaded newer image for "+ref) {
		t.Errorf("docker pull printed no digest or status:\n%s", pull)
	}
	// The daemon's metrics count the pull and its bytes.
	sock := daemon.SocketPath(d.root)
	unixHTTP := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	fams := scrape(t, unixHTTP, "http://kiln/metrics")
	if n, b := metricValue(fams, "kiln_image_pulls_total", "result", "ok"), metricValue(fams, "kiln_image_pull_bytes_total"); n != 1 || b < 500<<10 {
		t.Errorf("after one pull: kiln_image_pulls_total{ok} = %v, kiln_image_pull_bytes_total = %v (want 1, and the busybox layer's size)", n, b)
	}
	if out := d.ok("images", "--format", "{{.Repository}}:{{.Tag}}"); !strings.Contains(out, ref) {
		t.Errorf("docker images does not list %s:\n%s", ref, out)
	}

	// docker tag and kiln tag give the image more names.
	d.ok("tag", ref, "kiln-test/renamed:2")
	ok(t, "kiln tag", d.kiln("tag", "kiln-test/renamed:2", "kiln-test/again"))
	if out := d.ok("images", "--format", "{{.Repository}}:{{.Tag}}"); !strings.Contains(out, "kiln-test/renamed:2") || !strings.Contains(out, "kiln-test/again:latest") {
		t.Errorf("docker images after the tags:\n%s", out)
	}
	if r := d.kiln("tag", "no-such/image:1", "x:1"); r.code != 125 {
		t.Errorf("kiln tag of a missing image: want 125:\n%s", r)
	}
	d.ok("rmi", "kiln-test/renamed:2", "kiln-test/again")

	// docker run --rm: output on the right streams, the exit code, no VM
	// left.
	r := d.cli("", "run", "--rm", ref, "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
	if r.code != 3 || r.stdout != "to-out\n" || !strings.Contains(r.stderr, "to-err") {
		t.Errorf("docker run --rm: want exit 3, to-out on stdout, to-err on stderr:\n%s", r)
	}
	if out := d.ok("ps", "-aq"); out != "" {
		t.Errorf("docker run --rm left containers: %q", out)
	}
	// The image's own command, and an env var.
	if r := d.cli("", "run", "--rm", "-e", "GREETING=hi", ref, "sh", "-c", "echo $GREETING"); r.code != 0 || r.stdout != "hi\n" {
		t.Errorf("docker run -e: want hi:\n%s", r)
	}

	// docker run -d -p: the port answers; ps, labels and inspect show it.
	id := d.ok("run", "-d", "--name", "web", "--label", "tier=front", "-p", "127.0.0.1::80", "-v", "webdata:/data",
		"--restart", "unless-stopped", ref, "httpd", "-f", "-p", "80", "-h", "/www")
	if len(id) != 64 {
		t.Fatalf("docker run -d printed %q, want a 64-digit ID", id)
	}
	t.Cleanup(func() { d.cli("", "rm", "-f", "web") })
	port := d.ok("inspect", "-f", `{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}`, "web")
	body := fetchBody(t, "http://127.0.0.1:"+port+"/")
	if body != "hello from a kiln VM\n" {
		t.Errorf("GET of the published port: got %q", body)
	}
	if out := d.ok("ps", "--filter", "label=tier=front", "--format", "{{.Names}} {{.State}} {{.Ports}}"); !strings.HasPrefix(out, "web running 127.0.0.1:"+port+"->80/tcp") {
		t.Errorf("docker ps --filter label: got %q", out)
	}
	if out := d.ok("ps", "--filter", "label=tier=back", "-q"); out != "" {
		t.Errorf("docker ps --filter label=tier=back lists %q", out)
	}
	// kiln's own CLI sees the docker-made VM and its labels.
	if r := ok(t, "kiln ps --filter label", d.kiln("ps", "-q", "--filter", "label=tier=front")); strings.TrimSpace(r.stdout) != id[:12] {
		t.Errorf("kiln ps --filter label=tier=front: %q, want %s", r.stdout, id[:12])
	}
	// kiln create --label and --label-file, shown by both inspects.
	lf := filepath.Join(t.TempDir(), "labels")
	if err := os.WriteFile(lf, []byte("# team\nteam=ops\ntier=file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, "kiln create --label", d.kiln("create", "--name", "labelled", "--pull", "never", "--label-file", lf, "-l", "tier=flag", ref, "true"))
	if got := strings.TrimSpace(ok(t, "kiln inspect", d.kiln("inspect", "--format", "{{.Config.Labels.team}} {{.Config.Labels.tier}}", "labelled")).stdout); got != "ops flag" {
		t.Errorf("kiln inspect labels: %q, want ops flag (a --label over the file's)", got)
	}
	if got := d.ok("inspect", "-f", "{{.Config.Labels.team}}", "labelled"); got != "ops" {
		t.Errorf("docker inspect of a kiln-made VM's label: %q", got)
	}
	if r := d.kiln("create", "--pull", "never", "--label", "bad key=1", ref, "true"); r.code != 125 || !strings.Contains(r.stderr, "invalid label") {
		t.Errorf("kiln create with a bad label: want 125 naming it:\n%s", r)
	}
	ok(t, "kiln rm", d.kiln("rm", "labelled"))
	for tmpl, want := range map[string]string{
		"{{.State.Running}}":                 "true",
		"{{.Config.Labels.tier}}":            "front",
		"{{.HostConfig.RestartPolicy.Name}}": "unless-stopped",
		"{{(index .Mounts 0).Name}}":         "webdata",
		"{{.Name}}":                          "/web",
	} {
		if got := d.ok("inspect", "-f", tmpl, "web"); got != want {
			t.Errorf("docker inspect -f %s: got %q, want %q", tmpl, got, want)
		}
	}

	// docker update: the restart policy at once.
	d.ok("update", "--restart", "on-failure:3", "web")
	if got := d.ok("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}", "web"); got != "on-failure:3" {
		t.Errorf("after docker update --restart: %q", got)
	}
	// docker top lists the guest's processes.
	if out := d.ok("top", "web"); !strings.Contains(out, "httpd -f -p 80") || !strings.Contains(out, "PID") {
		t.Errorf("docker top:\n%s", out)
	}
	// docker system df counts the running VM and its image.
	if out := d.ok("system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}"); !strings.Contains(out, "Images 1 1") || !strings.Contains(out, "Containers 1 1") {
		t.Errorf("docker system df:\n%s", out)
	}

	// exec: output and exit code; stdin; a terminal through a pty.
	if r := d.cli("", "exec", "web", "sh", "-c", "echo in-vm; exit 4"); r.code != 4 || r.stdout != "in-vm\n" {
		t.Errorf("docker exec: want exit 4 and in-vm:\n%s", r)
	}
	if r := d.cli("piped through\n", "exec", "-i", "web", "cat"); r.code != 0 || r.stdout != "piped through\n" {
		t.Errorf("docker exec -i cat: want the input back:\n%s", r)
	}
	t.Run("exec-it", func(t *testing.T) { d.execTTY(t) })

	// cp both ways.
	src := filepath.Join(t.TempDir(), "note.txt")
	if err := os.WriteFile(src, []byte("copied in\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.ok("cp", src, "web:/data/note.txt")
	if r := d.cli("", "exec", "web", "cat", "/data/note.txt"); r.stdout != "copied in\n" {
		t.Errorf("docker cp into the VM: cat shows %q", r.stdout)
	}
	back := filepath.Join(t.TempDir(), "back.txt")
	d.ok("cp", "web:/data/note.txt", back)
	if b, err := os.ReadFile(back); err != nil || string(b) != "copied in\n" {
		t.Errorf("docker cp out of the VM: %q, %v", b, err)
	}

	// logs -f follows a VM until its program ends.
	d.ok("run", "-d", "--name", "slow", ref, "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 1; done")
	if r := d.cli("", "logs", "-f", "slow"); r.code != 0 || r.stdout != "line 1\nline 2\nline 3\n" {
		t.Errorf("docker logs -f of a VM printing for 3 s: want its three lines:\n%s", r)
	}
	if got := d.ok("inspect", "-f", "{{.State.ExitCode}}", "slow"); got != "0" {
		t.Errorf("inspect -f {{.State.ExitCode}}: %q", got)
	}
	d.ok("rm", "slow")

	// logs of a VM that printed and ended.
	d.ok("run", "--name", "counter", ref, "sh", "-c", "seq 1 3; echo oops >&2")
	if r := d.cli("", "logs", "counter"); r.stdout != "1\n2\n3\n" || r.stderr != "oops\n" {
		t.Errorf("docker logs: want 1 2 3 on stdout and oops on stderr:\n%s", r)
	}
	if r := d.cli("", "logs", "--tail", "1", "counter"); r.stdout != "" || r.stderr != "oops\n" {
		t.Errorf("docker logs --tail 1: want only oops:\n%s", r)
	}
	if got := d.ok("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "counter"); got != "exited 0" {
		t.Errorf("inspect of the ended VM: %q", got)
	}
	d.ok("rm", "counter")

	// stop and rm -v.
	d.ok("stop", "-t", "2", "web")
	if got := d.ok("inspect", "-f", "{{.State.Status}}", "web"); got != "exited" {
		t.Errorf("after docker stop: status %q", got)
	}
	d.ok("rm", "-v", "web")
	if r := d.cli("", "inspect", "web"); r.code == 0 || !strings.Contains(r.stderr, "No such") {
		t.Errorf("docker inspect after rm: want no such container:\n%s", r)
	}

	// Volumes.
	d.ok("volume", "create", "--label", "team=db", "vol1")
	if got := d.ok("volume", "inspect", "-f", "{{.Labels.team}}", "vol1"); got != "db" {
		t.Errorf("docker volume inspect of a labelled volume: %q", got)
	}
	if got := d.ok("volume", "ls", "-q", "--filter", "label=team=db"); got != "vol1" {
		t.Errorf("docker volume ls --filter label=team=db: %q", got)
	}
	if got := strings.TrimSpace(ok(t, "kiln volume ls", d.kiln("volume", "ls", "-q", "--filter", "label=team", "--filter", "dangling=true")).stdout); got != "vol1" {
		t.Errorf("kiln volume ls --filter label=team --filter dangling=true: %q", got)
	}
	if out := d.ok("volume", "ls", "--format", "{{.Name}} {{.Driver}}"); !strings.Contains(out, "vol1 local") || !strings.Contains(out, "webdata local") {
		t.Errorf("docker volume ls: %q", out)
	}
	d.ok("volume", "rm", "vol1", "webdata")
	if out := d.ok("volume", "ls", "-q"); out != "" {
		t.Errorf("volumes left after rm: %q", out)
	}

	// Refused: one line naming the field, docker's exit code for a daemon
	// error, nothing made.
	for _, args := range [][]string{
		{"run", "--rm", "--privileged", ref, "true"},
		{"run", "--rm", "--network", "host", ref, "true"},
		{"run", "--rm", "--pid", "host", ref, "true"},
		{"run", "--rm", "--device", "/dev/null", ref, "true"},
		{"run", "--rm", "-t", ref, "true"},
	} {
		r := d.cli("", args...)
		if r.code != 125 || !strings.Contains(r.stderr, "Error response from daemon") || !strings.Contains(r.stderr, "refused") && !strings.Contains(r.stderr, "not supported") {
			t.Errorf("docker %v: want exit 125 with the daemon's refusal:\n%s", args, r)
		}
	}
	if out := d.ok("ps", "-aq"); out != "" {
		t.Errorf("refused runs left containers: %q", out)
	}
	if r := d.cli("", "run", "--rm", "no-such/image:1"); r.code != 125 {
		t.Errorf("docker run of an image no registry has: want 125:\n%s", r)
	}
}

// execTTY runs docker exec -it on a pseudo-terminal: the shell's prompt,
// a command's output, and its exit code.
func (d *dockerEnv) execTTY(t *testing.T) {
	m, s := openPTY(t)
	cmd := exec.Command(d.docker, "exec", "-it", "web", "sh")
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+daemon.DockerSocketPath(d.root), "DOCKER_CONFIG="+d.config)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pr := newPTYReader(m)
	io.WriteString(m, "echo tty-$((6*7)); test -t 0 && echo is-a-tty\n")
	pr.await(t, "tty-42")
	pr.await(t, "is-a-tty")
	io.WriteString(m, "exit 6\n")
	select {
	case err := <-done:
		if ee, isExit := err.(*exec.ExitError); !isExit || ee.ExitCode() != 6 {
			t.Errorf("docker exec -it sh: want exit 6, got %v", err)
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("docker exec -it did not end after exit")
	}
}

// fetchBody GETs url until it answers (a VM's server may still be
// starting), bounded, and returns the body.
func fetchBody(t *testing.T, url string) string {
	t.Helper()
	var last error
	for i := 0; i < 100; i++ {
		resp, err := http.Get(url)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				return string(b)
			}
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

// TestDockerGoSDK drives the Docker API socket with docker's own Go
// client, as programs written for docker do: create, start, wait, logs
// (demultiplexed), inspect and remove; and a refused field comes back in
// docker's error shape.
func TestDockerGoSDK(t *testing.T) {
	t.Parallel()
	d := newDockerEnv(t)
	d.loadImage("kiln-test/box:sdk", dockerTestImage(t))
	cli, err := dockerclient.NewClientWithOpts(dockerclient.WithHost("unix://"+daemon.DockerSocketPath(d.root)), dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	created, err := cli.ContainerCreate(ctx, &container.Config{
		Image: "kiln-test/box:sdk", Cmd: []string{"sh", "-c", "echo sdk-out; echo sdk-err >&2; exit 9"},
		Labels: map[string]string{"by": "sdk"},
	}, &container.HostConfig{}, nil, nil, "sdk")
	if err != nil {
		t.Fatal(err)
	}
	if v := cli.ClientVersion(); v != "1.41" {
		t.Errorf("negotiated API version %s, want 1.41", v)
	}
	waitC, errC := cli.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case w := <-waitC:
		if w.StatusCode != 9 {
			t.Errorf("wait: exit %d, want 9", w.StatusCode)
		}
	case err := <-errC:
		t.Fatal(err)
	}
	rc, err := cli.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if stdout.String() != "sdk-out\n" || stderr.String() != "sdk-err\n" {
		t.Errorf("logs: stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	info, err := cli.ContainerInspect(ctx, "sdk")
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Status != "exited" || info.State.ExitCode != 9 || info.Config.Labels["by"] != "sdk" || info.Name != "/sdk" {
		t.Errorf("inspect: status %s, exit %d, labels %v, name %s", info.State.Status, info.State.ExitCode, info.Config.Labels, info.Name)
	}
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "by=sdk"))})
	if err != nil || len(list) != 1 || list[0].ID != created.ID {
		t.Errorf("list by label: %v, %v", list, err)
	}
	if err := cli.ContainerRemove(ctx, created.ID, container.RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ContainerInspect(ctx, created.ID); !errdefsDocker.IsNotFound(err) {
		t.Errorf("inspect after remove: %v, want not found", err)
	}
	_, err = cli.ContainerCreate(ctx, &container.Config{Image: "kiln-test/box:sdk"}, &container.HostConfig{Privileged: true}, nil, nil, "")
	if !errdefsDocker.IsInvalidParameter(err) || !strings.Contains(err.Error(), "Privileged") {
		t.Errorf("create with Privileged: %v, want an invalid-parameter error naming it", err)
	}
	if list, _ := cli.ContainerList(ctx, container.ListOptions{All: true}); len(list) != 0 {
		t.Errorf("containers left: %v", list)
	}
}

// TestDockerCompose brings a two-service project up and down with
// docker-compose 1.29 (Debian's) through the Docker API socket, in a
// network namespace of the test's: compose's network becomes a kiln
// bridge network, its volume a kiln volume, its services VMs that reach
// each other by service name; down -v leaves none of them.
func TestDockerCompose(t *testing.T) {
	t.Parallel()
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("no docker-compose on this host: run scripts/setup (apt-get install docker-compose)")
	}
	e := newNetEnv(t)
	ok(t, "kernel import", e.kiln("kernel", "import", e.kernel))
	e.loadImage("kiln-test/box:compose", dockerTestImage(t))
	dir := t.TempDir()
	yml := `version: "3.8"
services:
  web:
    image: kiln-test/box:compose
    command: httpd -f -p 80 -h /www
    ports: ["127.0.0.1:18191:80"]
    labels: {tier: front}
  client:
    image: kiln-test/box:compose
    command: sh -c 'echo client up; exec sleep 100000'
    depends_on: [web]
    environment:
      - GREETING=${GREETING}
    volumes: ["data:/data"]
volumes:
  data: {}
`
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	dc := func(args ...string) result {
		t.Helper()
		return runDockerTool(t, e.root, e.home, e.home, dir, []string{"GREETING=from-compose"}, "", compose, append([]string{"-p", "kt"}, args...)...)
	}
	t.Cleanup(func() { dc("down", "-v", "-t", "1") })
	ok(t, "docker-compose up -d", dc("up", "-d"))
	ps := ok(t, "docker-compose ps", dc("ps"))
	for _, want := range []string{"kt_web_1", "kt_client_1"} {
		if !regexp.MustCompile(want + `\s.*Up`).MatchString(ps.stdout) {
			t.Errorf("docker-compose ps: no %s up:\n%s", want, ps.stdout)
		}
	}
	// The service answers on its published port, and by its service name
	// from the other service.
	if out, err := e.helper("get", "http://127.0.0.1:18191/"); err != nil || out != "hello from a kiln VM\n" {
		t.Errorf("GET of web's published port: %q, %v", out, err)
	}
	if r := dc("exec", "-T", "client", "wget", "-qO-", "http://web/"); r.code != 0 || r.stdout != "hello from a kiln VM\n" {
		t.Errorf("client reaching web by its service name:\n%s", r)
	}
	if r := dc("exec", "-T", "client", "sh", "-c", "echo $GREETING"); r.stdout != "from-compose\n" {
		t.Errorf("interpolated environment: %q", r.stdout)
	}
	if r := ok(t, "up -d again", dc("up", "-d")); !strings.Contains(r.stderr, "is up-to-date") {
		t.Errorf("a second up -d recreated something:\n%s", r)
	}
	ok(t, "docker-compose down -v", dc("down", "-v", "-t", "1"))
	if r := e.kiln("ps", "-a", "-q"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("VMs left after down: %q", r.stdout)
	}
	if r := e.kiln("network", "ls"); strings.Contains(r.stdout, "kt_default") {
		t.Errorf("network left after down:\n%s", r.stdout)
	}
	if r := e.kiln("volume", "ls"); strings.Contains(r.stdout, "kt_data") {
		t.Errorf("volume left after down -v:\n%s", r.stdout)
	}

	// The docker CLI's network verbs on the same root: a network with a
	// subnet picked for it, a VM on it known by an alias, removal.
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Log("no docker CLI on this host: its network verbs are not tried (apt-get install docker.io)")
		return
	}
	d := &dockerEnv{env: e.env, docker: docker, config: e.home}
	d.ok("network", "create", "--label", "team=net", "kn")
	if got, id := d.ok("network", "ls", "-q", "--filter", "label=team=net"), d.ok("network", "inspect", "-f", "{{.Id}}", "kn"); len(id) < 12 || got != id[:12] {
		t.Errorf("docker network ls --filter label=team=net: %q", got)
	}
	if got := strings.TrimSpace(ok(t, "kiln network ls", e.kiln("network", "ls", "-q", "--filter", "label=team")).stdout); got != "kn" {
		t.Errorf("kiln network ls --filter label=team: %q", got)
	}
	if out := d.ok("network", "ls", "--format", "{{.Name}}"); !strings.Contains(out, "kn") || !strings.Contains(out, "bridge") || !strings.Contains(out, "none") {
		t.Errorf("docker network ls: %q", out)
	}
	if sub := d.ok("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "kn"); !strings.HasPrefix(sub, "10.89.") {
		t.Errorf("docker network create picked subnet %q, want one of 10.89.0.0/16", sub)
	}
	d.ok("run", "-d", "--name", "srv", "--network", "kn", "--network-alias", "svc", "kiln-test/box:compose", "httpd", "-f", "-p", "80", "-h", "/www")
	if r := d.cli("", "run", "--rm", "--network", "kn", "kiln-test/box:compose", "wget", "-qO-", "http://svc/"); r.code != 0 || r.stdout != "hello from a kiln VM\n" {
		t.Errorf("a VM reaching another by its network alias:\n%s", r)
	}
	if r := d.cli("", "network", "rm", "kn"); r.code == 0 {
		t.Errorf("docker network rm of a network with a VM on it succeeded:\n%s", r)
	}
	d.ok("rm", "-f", "srv")
	d.ok("network", "rm", "kn")
	if r := e.kiln("network", "ls"); strings.Contains(r.stdout, "kn ") {
		t.Errorf("network left after docker network rm:\n%s", r.stdout)
	}
}
