package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	composecli "github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
)

// repoRoot is where docker-compose.yml and the Dockerfile are, seen from this
// package's directory (go test runs in it).
const repoRoot = "../.."

// natsServices are docker-compose.yml's NATS servers.
var natsServices = []string{"n1", "n2", "n3"}

// CI has no Docker engine: this test reads docker-compose.yml with the
// compose-spec loader (which checks it against the compose schema, as
// `docker compose config` does), reads each NATS server's command line and
// configuration file with nats-server's own parser, and the ledger's with
// `ledger serve`'s flags, and checks that they make the production shape.
func TestDockerComposeRunsTheLedgerOnAThreeServerJetStreamCluster(t *testing.T) {
	project := loadCompose(t)

	// The NATS servers: one cluster, every server routing to all three,
	// JetStream on a volume of its own.
	clientPorts := map[string]int{}
	var clusterName string
	storeVolumes := map[string]string{}
	for _, name := range natsServices {
		svc, ok := project.Services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		opts := natsOptions(t, svc)
		if opts.ServerName != name {
			t.Errorf("%s: server name %q; JetStream needs a stable name per server, its service's", name, opts.ServerName)
		}
		if !opts.JetStream {
			t.Errorf("%s: JetStream is not enabled", name)
		}
		vol := volumeAt(svc, opts.StoreDir)
		switch {
		case vol == nil || vol.Type != types.VolumeTypeVolume:
			t.Errorf("%s: JetStream's store_dir %q is not on a named volume: a new container would start empty", name, opts.StoreDir)
		case storeVolumes[vol.Source] != "":
			t.Errorf("%s and %s share volume %s: each server needs its own store", storeVolumes[vol.Source], name, vol.Source)
		default:
			storeVolumes[vol.Source] = name
		}
		if opts.Cluster.Name == "" || (clusterName != "" && opts.Cluster.Name != clusterName) {
			t.Errorf("%s: cluster name %q, want one name shared by all three servers", name, opts.Cluster.Name)
		}
		clusterName = opts.Cluster.Name
		var routes []string
		for _, r := range opts.Routes {
			routes = append(routes, r.Host)
		}
		slices.Sort(routes)
		var want []string
		for _, peer := range natsServices {
			want = append(want, net.JoinHostPort(peer, strconv.Itoa(opts.Cluster.Port)))
		}
		if !slices.Equal(routes, want) {
			t.Errorf("%s: routes %v, want %v: JetStream sizes its cluster from the routes", name, routes, want)
		}
		checkHealthcheck(t, svc, fmt.Sprintf("http://127.0.0.1:%d/healthz", opts.HTTPPort))
		clientPorts[name] = opts.Port
	}

	// The ledger: on all three servers, the stream replicated on all three,
	// started once they are healthy.
	ledger, ok := project.Services["ledger"]
	if !ok {
		t.Fatal("no service ledger")
	}
	if ledger.Build == nil || filepath.Clean(ledger.Build.Context) != absRoot(t) || !(ledger.Build.Dockerfile == "" || ledger.Build.Dockerfile == "Dockerfile") {
		t.Errorf("ledger: build %+v, want the repository's Dockerfile", ledger.Build)
	}
	args := []string(ledger.Command)
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("ledger: command %q, want serve", args)
	}
	serve := newServeCmd(io.Discard, io.Discard, new(bool))
	if err := serve.ParseFlags(args[1:]); err != nil {
		t.Fatalf("ledger: command %q: %v", args, err)
	}
	flags := serve.Flags()
	urls := strings.Split(flags.Lookup("nats-url").Value.String(), ",")
	slices.Sort(urls)
	var wantURLs []string
	for _, name := range natsServices {
		wantURLs = append(wantURLs, fmt.Sprintf("nats://%s:%d", name, clientPorts[name]))
	}
	if !slices.Equal(urls, wantURLs) {
		t.Errorf("ledger: --nats-url %v, want every server: %v", urls, wantURLs)
	}
	if r := flags.Lookup("replicas").Value.String(); r != strconv.Itoa(len(natsServices)) {
		t.Errorf("ledger: --replicas %s, want %d: one replica on each server", r, len(natsServices))
	}
	host, port, err := net.SplitHostPort(flags.Lookup("http").Value.String())
	if err != nil || host != "0.0.0.0" {
		t.Errorf("ledger: --http %s, want 0.0.0.0:PORT to be reachable from outside its container", flags.Lookup("http").Value)
	}
	if !slices.ContainsFunc(ledger.Ports, func(p types.ServicePortConfig) bool { return strconv.Itoa(int(p.Target)) == port }) {
		t.Errorf("ledger: no port published for the API's port %s: %+v", port, ledger.Ports)
	}
	if vol := volumeAt(ledger, flags.Lookup("data").Value.String()); vol == nil || vol.Type != types.VolumeTypeVolume {
		t.Errorf("ledger: --data %s is not on a named volume: the audit signing key and the bootstrap token would be lost with the container", flags.Lookup("data").Value)
	}
	checkHealthcheck(t, ledger, fmt.Sprintf("http://127.0.0.1:%s/readyz", port))
	for _, name := range natsServices {
		if dep, ok := ledger.DependsOn[name]; !ok || dep.Condition != types.ServiceConditionHealthy {
			t.Errorf("ledger: depends_on %s = %+v, want condition %s", name, dep, types.ServiceConditionHealthy)
		}
	}
}

// The image compose builds is the ledger's binary, run as a non-root user.
func TestDockerfileBuildsTheLedgerAndRunsItAsNonRoot(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string // each stage's instructions, FROM first
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(strings.ToUpper(line), "FROM "):
			stages = append(stages, []string{line})
		case len(stages) > 0:
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a runtime stage", len(stages))
	}
	build := regexp.MustCompile(`go build .*-o (\S+) \./cmd/ledger$`)
	var binary string
	for _, stage := range stages[:len(stages)-1] {
		for _, l := range stage {
			if m := build.FindStringSubmatch(l); m != nil {
				binary = m[1]
			}
		}
	}
	if binary == "" {
		t.Fatal("no build stage runs `go build ... -o BINARY ./cmd/ledger`")
	}
	runtime := stages[len(stages)-1]
	var copied, user, entry string
	for _, l := range runtime {
		switch f := strings.Fields(l); strings.ToUpper(f[0]) {
		case "COPY":
			if strings.Contains(l, "--from=") && strings.Contains(l, binary) {
				copied = f[len(f)-1]
			}
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entry = l
		}
	}
	if copied == "" {
		t.Errorf("the runtime stage does not copy %s from the build stage", binary)
	}
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("the runtime stage runs as %q, want a non-root user", user)
	}
	if !strings.Contains(entry, `"`+filepath.Base(copied)+`"`) && !strings.Contains(entry, `"`+copied+`"`) {
		t.Errorf("ENTRYPOINT %q does not run the ledger (%s)", entry, copied)
	}
}

func absRoot(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// loadCompose reads docker-compose.yml as `docker compose` would, without
// the environment: what the file says, not what this machine says.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := composecli.NewProjectOptions([]string{filepath.Join(absRoot(t), "docker-compose.yml")}, composecli.WithWorkingDirectory(absRoot(t)))
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return project
}

// natsOptions is what a NATS service's server runs with: its command line,
// and the configuration file it names, read from the file bound there.
func natsOptions(t *testing.T, svc types.ServiceConfig) *server.Options {
	t.Helper()
	args := slices.Clone([]string(svc.Command))
	if len(args) > 0 && args[0] == "nats-server" {
		args = args[1:]
	}
	for i, a := range args {
		if (a == "-c" || a == "--config" || a == "-config") && i+1 < len(args) {
			vol := volumeAt(svc, args[i+1])
			if vol == nil || vol.Type != types.VolumeTypeBind {
				t.Fatalf("%s: its configuration %s is not bound from the repository", svc.Name, args[i+1])
			}
			args[i+1] = vol.Source
		}
	}
	fs := flag.NewFlagSet(svc.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	opts, err := server.ConfigureOptions(fs, args, func() {}, func() {}, func() {})
	if err != nil {
		t.Fatalf("%s: nats-server %q: %v", svc.Name, args, err)
	}
	return opts
}

// volumeAt is the service's volume mounted at target, if any.
func volumeAt(svc types.ServiceConfig, target string) *types.ServiceVolumeConfig {
	for i, v := range svc.Volumes {
		if filepath.Clean(v.Target) == filepath.Clean(target) {
			return &svc.Volumes[i]
		}
	}
	return nil
}

// checkHealthcheck: the service has a health check that fetches url.
func checkHealthcheck(t *testing.T, svc types.ServiceConfig, url string) {
	t.Helper()
	hc := svc.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) < 2 {
		t.Errorf("%s: no health check", svc.Name)
		return
	}
	test := []string(hc.Test)
	if test[0] != "CMD" || !slices.ContainsFunc(test[1:], func(a string) bool { return strings.HasPrefix(a, url) }) {
		t.Errorf("%s: health check %q does not fetch %s", svc.Name, test, url)
	}
}
