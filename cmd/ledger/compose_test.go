package main

import (
	"cmp"
	"context"
	"encoding/json"
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
	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"

	"github.com/tokenledger/tokenledger/natsaccess"
)

// repoRoot is where docker-compose.yml and the Dockerfile are, seen from this
// package's directory (go test runs in it).
const repoRoot = "../.."

// natsServices are docker-compose.yml's NATS servers.
var natsServices = []string{"n1", "n2", "n3"}

// CI has no Docker engine: this test reads docker-compose.yml with the
// compose-spec loader (which checks it against the compose schema, as
// `docker compose config` does), runs the file's `ledger nats setup` for
// real into a temporary directory standing for its volume, lays each NATS
// server's files out as its mounts would (the configuration from the
// repository, the setup's output beside it) and reads its effective
// configuration with nats-server's own parser (the command line and the
// configuration file with its includes), reads each ledger's command line
// with `ledger serve`'s flags and the bootstrap's with `ledger bootstrap`'s,
// reads the load balancer's HAProxy configuration, and checks that they
// make the production shape, locked down: several ledgers on one stream
// behind a round-robin load balancer (issue 17).
func TestDockerComposeRunsTheLedgerOnAThreeServerJetStreamCluster(t *testing.T) {
	project := loadCompose(t)
	fs := &composeFS{t: t, volumes: map[string]string{}}

	// The setup: run once before anything else, from the ledger's image,
	// into a named volume.
	ledgers := ledgerServices(t, project)
	setup, creds := runComposeSetup(t, project, fs, ledgers[0])
	boot := bootstrapService(t, project)
	for _, name := range append(append(slices.Clone(natsServices), ledgers...), boot) {
		if dep, ok := project.Services[name].DependsOn[setup.name]; !ok || dep.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s: depends_on %s = %+v, want condition %s: it needs the files the setup writes", name, setup.name, dep, types.ServiceConditionCompletedSuccessfully)
		}
	}
	// Nothing is published beyond this host.
	for _, svc := range project.Services {
		checkPublishedOnLoopback(t, svc)
	}
	verified := &bcryptChecks{t: t, done: map[[2]string]bool{}}

	// The NATS servers: one cluster, every server routing to all three,
	// JetStream on a volume of its own, and nobody in without credentials.
	clientPorts := map[string]int{}
	var clusterName string
	storeVolumes := map[string]string{}
	for _, name := range natsServices {
		svc, ok := project.Services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		opts := natsOptions(t, svc, fs)
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
			// Never print r itself: it holds the route password.
			if pw, _ := r.User.Password(); r.User.Username() != natsaccess.RouteUser || pw != creds.RoutePassword {
				t.Errorf("%s: the route to %s does not log in as %s with the route password of %s", name, r.Host, natsaccess.RouteUser, natsCredentialsFile)
			}
		}
		slices.Sort(routes)
		var want []string
		for _, peer := range natsServices {
			want = append(want, net.JoinHostPort(peer, strconv.Itoa(opts.Cluster.Port)))
		}
		if !slices.Equal(routes, want) {
			t.Errorf("%s: routes %v, want %v: JetStream sizes its cluster from the routes", name, routes, want)
		}
		checkLockedDown(t, name, opts, creds, verified)
		for _, p := range svc.Ports {
			if int(p.Target) != opts.Port {
				t.Errorf("%s: port %d published; only the client port %d may be (routes need no outsider, monitoring has no credentials)", name, p.Target, opts.Port)
			}
		}
		checkHealthcheck(t, svc, fmt.Sprintf("http://127.0.0.1:%d/healthz", opts.HTTPPort))
		clientPorts[name] = opts.Port
	}

	// The ledgers: on all three servers with the setup's credentials, the
	// stream replicated on all three, started once they are healthy and the
	// bootstrap has run, each with a data volume of its own.
	ports := map[string]string{}
	dataVolumes := map[string]string{}
	for _, name := range ledgers {
		ledger := project.Services[name]
		if ledger.Build == nil || filepath.Clean(ledger.Build.Context) != absRoot(t) || !(ledger.Build.Dockerfile == "" || ledger.Build.Dockerfile == "Dockerfile") {
			t.Errorf("%s: build %+v, want the repository's Dockerfile", name, ledger.Build)
		}
		args := []string(ledger.Command)
		serve := newServeCmd(io.Discard, io.Discard, new(bool))
		if err := serve.ParseFlags(args[1:]); err != nil {
			t.Fatalf("%s: command %q: %v", name, args, err)
		}
		flags := serve.Flags()
		checkClusterFlags(t, name, flags.Lookup("nats-url").Value.String(), flags.Lookup("nats-credentials").Value.String(), ledger, fs, creds, setup, clientPorts)
		if s := flags.Lookup("stream").Value.String(); s != setup.stream {
			t.Errorf("%s: --stream %s, but %s configured the servers' accounts for stream %s", name, s, setup.name, setup.stream)
		}
		if r := flags.Lookup("replicas").Value.String(); r != strconv.Itoa(len(natsServices)) {
			t.Errorf("%s: --replicas %s, want %d: one replica on each server", name, r, len(natsServices))
		}
		host, port, err := net.SplitHostPort(flags.Lookup("http").Value.String())
		if err != nil || host != "0.0.0.0" {
			t.Errorf("%s: --http %s, want 0.0.0.0:PORT to be reachable from outside its container", name, flags.Lookup("http").Value)
		}
		ports[name] = port
		if len(ledger.Ports) > 0 {
			t.Errorf("%s: ports %+v published: the API is reached through the load balancer, which spreads requests over the ledgers", name, ledger.Ports)
		}
		switch vol := volumeAt(ledger, flags.Lookup("data").Value.String()); {
		case vol == nil || vol.Type != types.VolumeTypeVolume:
			t.Errorf("%s: --data %s is not on a named volume: the view's snapshot would be lost with the container", name, flags.Lookup("data").Value)
		case dataVolumes[vol.Source] != "":
			t.Errorf("%s and %s share the data volume %s: a data directory is one ledger's", dataVolumes[vol.Source], name, vol.Source)
		default:
			dataVolumes[vol.Source] = name
		}
		checkHealthcheck(t, ledger, fmt.Sprintf("http://127.0.0.1:%s/readyz", port))
		for _, dep := range natsServices {
			if d, ok := ledger.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: depends_on %s = %+v, want condition %s", name, dep, d, types.ServiceConditionHealthy)
			}
		}
		if d, ok := ledger.DependsOn[boot]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s: depends_on %s = %+v, want condition %s: `ledger serve` makes no bootstrap token", name, boot, d, types.ServiceConditionCompletedSuccessfully)
		}
	}
	checkComposeBootstrap(t, project, fs, boot, ledgers[0], creds, setup, clientPorts)
	checkLoadBalancer(t, project, ledgers, ports)
}

// ledgerServices is the services that run `ledger serve`: several, one
// stream.
func ledgerServices(t *testing.T, project *types.Project) []string {
	t.Helper()
	var out []string
	for name, svc := range project.Services {
		if c := []string(svc.Command); len(c) > 0 && c[0] == "serve" {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	if len(out) < 2 {
		t.Fatalf("services running `ledger serve`: %v, want at least two behind the load balancer", out)
	}
	return out
}

// bootstrapService is the one service that runs `ledger bootstrap`.
func bootstrapService(t *testing.T, project *types.Project) string {
	t.Helper()
	var found []string
	for name, svc := range project.Services {
		if c := []string(svc.Command); len(c) > 0 && c[0] == "bootstrap" {
			found = append(found, name)
		}
	}
	if len(found) != 1 {
		t.Fatalf("services running `ledger bootstrap`: %v, want one: it makes the first owner token before the ledgers start", found)
	}
	return found[0]
}

// checkClusterFlags: --nats-url names every server, and --nats-credentials
// is the file the setup wrote, on one of the service's volumes.
func checkClusterFlags(t *testing.T, name, natsURL, credPath string, svc types.ServiceConfig, fs *composeFS, creds natsaccess.Credentials, setup composeSetup, clientPorts map[string]int) {
	t.Helper()
	urls := strings.Split(natsURL, ",")
	slices.Sort(urls)
	var wantURLs []string
	for _, n := range natsServices {
		wantURLs = append(wantURLs, fmt.Sprintf("nats://%s:%d", n, clientPorts[n]))
	}
	if !slices.Equal(urls, wantURLs) {
		t.Errorf("%s: --nats-url %v, want every server: %v", name, urls, wantURLs)
	}
	if credPath == "" {
		t.Errorf("%s: no --nats-credentials: the ledger refuses --nats-url without the setup's %s", name, natsCredentialsFile)
		return
	}
	host, ok := fs.hostPath(svc, credPath)
	if !ok {
		t.Errorf("%s: --nats-credentials %s is on none of its volumes", name, credPath)
		return
	}
	got, err := natsaccess.LoadCredentials(host)
	if err != nil {
		t.Errorf("%s: --nats-credentials %s: %v", name, credPath, err)
	} else if got != creds {
		t.Errorf("%s: --nats-credentials %s is not the file %s wrote", name, credPath, setup.name)
	}
}

// checkComposeBootstrap: the bootstrap runs once, from the ledgers' image,
// once the servers are healthy, on the ledgers' cluster and stream, and
// writes the secret into a named volume the image lets it write.
func checkComposeBootstrap(t *testing.T, project *types.Project, fs *composeFS, name, ledgerName string, creds natsaccess.Credentials, setup composeSetup, clientPorts map[string]int) {
	t.Helper()
	svc, ledger := project.Services[name], project.Services[ledgerName]
	if svc.Build == nil || ledger.Build == nil || svc.Build.Context != ledger.Build.Context || svc.Image != ledger.Image || svc.Entrypoint != nil {
		t.Errorf("%s: build %+v image %q entrypoint %q, want the ledgers' image and its entrypoint", name, svc.Build, svc.Image, svc.Entrypoint)
	}
	if svc.Restart != "" && svc.Restart != types.RestartPolicyNo {
		t.Errorf("%s: restart %q: it runs once, and the ledgers wait for it to complete", name, svc.Restart)
	}
	for _, dep := range natsServices {
		if d, ok := svc.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: depends_on %s = %+v, want condition %s", name, dep, d, types.ServiceConditionHealthy)
		}
	}
	args := []string(svc.Command)
	var cmd *cobra.Command
	root := newRootCmd(strings.NewReader(""), io.Discard, io.Discard, func(string) string { return "" }, new(bool))
	if found, _, err := root.Find(args[:1]); err == nil && found != root && found.Name() == "bootstrap" {
		cmd = found
	}
	if cmd == nil {
		t.Errorf("%s: command %q, and this ledger has no `bootstrap` command", name, args)
		return
	}
	if err := cmd.ParseFlags(args[1:]); err != nil {
		t.Errorf("%s: command %q: %v", name, args, err)
		return
	}
	flags := cmd.Flags()
	value := func(f string) string {
		if fl := flags.Lookup(f); fl != nil {
			return fl.Value.String()
		}
		return ""
	}
	checkClusterFlags(t, name, value("nats-url"), value("nats-credentials"), svc, fs, creds, setup, clientPorts)
	if s := flags.Lookup("stream"); s != nil && s.Value.String() != setup.stream {
		t.Errorf("%s: --stream %s, but the ledgers use %s", name, s.Value, setup.stream)
	}
	if r := flags.Lookup("replicas"); r != nil && r.Value.String() != strconv.Itoa(len(natsServices)) {
		t.Errorf("%s: --replicas %s: should it make the stream, it must be the ledgers' (%d)", name, r.Value, len(natsServices))
	}
	out := value("out")
	vol := volumeContaining(svc, out)
	if out == "" || vol == nil || vol.Type != types.VolumeTypeVolume {
		t.Errorf("%s: --out %q is not on a named volume: the secret would be lost with the container", name, out)
		return
	}
	if vol.ReadOnly {
		t.Errorf("%s: --out %s is on a read-only mount", name, out)
	}
	checkImageOwns(t, name, vol.Target)
}

// haproxySection is a section of an HAProxy configuration: its keyword
// and name ("backend ledgers"), and its lines without comments.
type haproxySection struct {
	kind, name string
	lines      [][]string
}

// readHAProxy splits an HAProxy configuration into sections.
func readHAProxy(t *testing.T, path string) []haproxySection {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []haproxySection
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "global", "defaults", "frontend", "backend", "listen", "resolvers", "peers", "userlist", "program", "http-errors", "ring", "cache":
			sec := haproxySection{kind: f[0]}
			if len(f) > 1 {
				sec.name = f[1]
			}
			out = append(out, sec)
			continue
		}
		if len(out) == 0 {
			t.Fatalf("%s: %q before any section", path, line)
		}
		out[len(out)-1].lines = append(out[len(out)-1].lines, f)
	}
	return out
}

// has: the section has a line starting with these words.
func (s haproxySection) has(words ...string) bool {
	return slices.ContainsFunc(s.lines, func(l []string) bool { return len(l) >= len(words) && slices.Equal(l[:len(words)], words) })
}

// checkLoadBalancer: an off-the-shelf HAProxy image, its configuration
// bound from docker/haproxy.cfg, publishes the API on loopback and spreads
// requests round robin, without stickiness, over every ledger, each
// checked with GET /readyz.
func checkLoadBalancer(t *testing.T, project *types.Project, ledgers []string, ports map[string]string) {
	t.Helper()
	var name string
	for n, svc := range project.Services {
		if strings.HasPrefix(svc.Image, "haproxy:") {
			name = n
		}
	}
	if name == "" {
		t.Fatal("no service runs an haproxy image: the ledgers need a load balancer in front")
	}
	lb := project.Services[name]
	if lb.Build != nil {
		t.Errorf("%s: built here; want the off-the-shelf image", name)
	}
	const confPath = "/usr/local/etc/haproxy/haproxy.cfg"
	vol := volumeAt(lb, confPath)
	if vol == nil || vol.Type != types.VolumeTypeBind || filepath.Clean(vol.Source) != filepath.Join(absRoot(t), "docker", "haproxy.cfg") || !vol.ReadOnly {
		t.Fatalf("%s: %s is not docker/haproxy.cfg bound read-only: %+v", name, confPath, vol)
	}
	sections := readHAProxy(t, vol.Source)
	var frontends, backends []haproxySection
	var defaults haproxySection
	for _, s := range sections {
		switch s.kind {
		case "frontend", "listen":
			frontends = append(frontends, s)
		case "defaults":
			defaults = s
		}
		if s.kind == "backend" || s.kind == "listen" {
			backends = append(backends, s)
		}
	}
	if !defaults.has("mode", "http") {
		t.Errorf("haproxy.cfg: defaults without mode http: health checks and X-Forwarded-For need HTTP")
	}
	// The client's address reaches the ledgers, and only HAProxy can say
	// it: HAProxy replaces whatever X-Forwarded-For a client sent, has a
	// fixed address, and every ledger trusts that address alone. Otherwise
	// every client is HAProxy, with one failed-authentication budget for
	// all (twenty bad requests would lock everyone out), or any client
	// names its own address.
	for _, f := range frontends {
		if !f.has("http-request", "set-header", "X-Forwarded-For", "%[src]") {
			t.Errorf("haproxy.cfg: frontend %s does not set X-Forwarded-For to the client's address (replacing the client's own)", f.name)
		}
	}
	var lbAddr string
	for _, n := range lb.Networks {
		if n != nil && n.Ipv4Address != "" {
			lbAddr = n.Ipv4Address
		}
	}
	if lbAddr == "" {
		t.Errorf("%s: no fixed address for the ledgers to trust (networks.<net>.ipv4_address)", name)
	}
	for _, l := range ledgers {
		cmd := []string(project.Services[l].Command)
		var trusted []string
		for i, a := range cmd {
			if a == "--trusted-proxy" && i+1 < len(cmd) {
				trusted = append(trusted, cmd[i+1])
			}
		}
		if len(trusted) != 1 || (trusted[0] != lbAddr && trusted[0] != lbAddr+"/32") {
			t.Errorf("%s: --trusted-proxy %v, want HAProxy's address %s alone", l, trusted, lbAddr)
		}
	}
	// The published port is a frontend's.
	var bound []string
	for _, f := range frontends {
		for _, l := range f.lines {
			if l[0] == "bind" && len(l) > 1 {
				_, port, _ := net.SplitHostPort(l[1])
				bound = append(bound, port)
			}
		}
	}
	if len(lb.Ports) == 0 {
		t.Errorf("%s: no port published: the API is reached through it", name)
	}
	for _, p := range lb.Ports {
		if !slices.Contains(bound, strconv.Itoa(int(p.Target))) {
			t.Errorf("%s: port %d published, and no frontend binds it (binds %v)", name, p.Target, bound)
		}
	}
	if len(backends) != 1 {
		t.Fatalf("haproxy.cfg: %d backends, want one: the ledgers", len(backends))
	}
	be := backends[0]
	if !be.has("balance", "roundrobin") {
		t.Errorf("haproxy.cfg: backend %s does not balance roundrobin", be.name)
	}
	for _, sticky := range [][]string{{"cookie"}, {"stick"}, {"stick-table"}, {"balance", "source"}, {"hash-type"}, {"persist"}} {
		if be.has(sticky...) || defaults.has(sticky...) {
			t.Errorf("haproxy.cfg: %q: no stickiness; every ledger gives the same answer", strings.Join(sticky, " "))
		}
	}
	if !be.has("option", "httpchk", "GET", "/readyz") && !(be.has("option", "httpchk") && be.has("http-check", "send", "meth", "GET", "uri", "/readyz")) {
		t.Errorf("haproxy.cfg: backend %s does not check GET /readyz: a ledger that cannot take commands would get requests", be.name)
	}
	checked := be.has("default-server", "check") || slices.ContainsFunc(be.lines, func(l []string) bool { return l[0] == "default-server" && slices.Contains(l, "check") })
	servers := map[string]bool{}
	for _, l := range be.lines {
		if l[0] != "server" || len(l) < 3 {
			continue
		}
		host, port, err := net.SplitHostPort(l[2])
		switch {
		case err != nil || !slices.Contains(ledgers, host):
			t.Errorf("haproxy.cfg: server %s at %s is not a ledger service (%v)", l[1], l[2], ledgers)
		case port != ports[host]:
			t.Errorf("haproxy.cfg: server %s at port %s; %s serves on %s", l[1], port, host, ports[host])
		default:
			servers[host] = true
		}
		if !checked && !slices.Contains(l, "check") {
			t.Errorf("haproxy.cfg: server %s is not health checked", l[1])
		}
	}
	for _, l := range ledgers {
		if !servers[l] {
			t.Errorf("haproxy.cfg: ledger %s is not a server of backend %s", l, be.name)
		}
	}
	for _, l := range ledgers {
		if _, ok := lb.DependsOn[l]; !ok {
			t.Errorf("%s: no depends_on %s", name, l)
		}
	}
	if lb.HealthCheck == nil || lb.HealthCheck.Disable || len(lb.HealthCheck.Test) < 2 {
		t.Errorf("%s: no health check", name)
	}
}

// composeSetup is the compose service that runs `ledger nats setup`.
type composeSetup struct {
	name   string
	stream string
}

// runComposeSetup finds the service that runs `ledger nats setup`, checks
// it is the ledger's image writing into a named volume the image lets it
// write, runs its command line for real with the volume's temporary
// directory for DIR, and returns the credentials it made.
func runComposeSetup(t *testing.T, project *types.Project, fs *composeFS, ledgerName string) (composeSetup, natsaccess.Credentials) {
	t.Helper()
	var found []string
	for name, svc := range project.Services {
		if c := []string(svc.Command); len(c) >= 2 && c[0] == "nats" && c[1] == "setup" {
			found = append(found, name)
		}
	}
	if len(found) != 1 {
		t.Fatalf("services running `ledger nats setup`: %v, want one: the servers need its files before they start", found)
	}
	svc := project.Services[found[0]]
	ledger := project.Services[ledgerName]
	if svc.Build == nil || ledger.Build == nil || svc.Build.Context != ledger.Build.Context || svc.Build.Dockerfile != ledger.Build.Dockerfile || svc.Image != ledger.Image {
		t.Errorf("%s: build %+v image %q, want the ledger's (%+v, %q)", svc.Name, svc.Build, svc.Image, ledger.Build, ledger.Image)
	}
	if svc.Entrypoint != nil {
		t.Errorf("%s: entrypoint %q, want the image's (ledger)", svc.Name, svc.Entrypoint)
	}
	if svc.Restart != "" && svc.Restart != types.RestartPolicyNo {
		t.Errorf("%s: restart %q: it runs once, and the others wait for it to complete", svc.Name, svc.Restart)
	}
	args := slices.Clone([]string(svc.Command))
	cmd := newNATSSetupCmd(io.Discard, new(bool))
	if err := cmd.ParseFlags(args[2:]); err != nil || len(cmd.Flags().Args()) != 1 {
		t.Fatalf("%s: command %q: %v, want nats setup DIR [flags]", svc.Name, args, err)
	}
	dir := cmd.Flags().Args()[0]
	vol := volumeContaining(svc, dir)
	if vol == nil || vol.Type != types.VolumeTypeVolume {
		t.Fatalf("%s: DIR %s is not on a named volume: nothing it writes would reach the servers and the ledger", svc.Name, dir)
	}
	checkImageOwns(t, svc.Name, vol.Target)
	host, _ := fs.hostPath(svc, dir)
	i := slices.Index(args, dir)
	args[i] = host
	if code, out, errOut := (cli{t: t}).run("", args...); code != 0 {
		t.Fatalf("%s: ledger %q: exit %d: %s%s", svc.Name, args, code, out, errOut)
	}
	creds, err := natsaccess.LoadCredentials(filepath.Join(host, natsCredentialsFile))
	if err != nil {
		t.Fatalf("%s: %v", svc.Name, err)
	}
	return composeSetup{name: svc.Name, stream: cmd.Flags().Lookup("stream").Value.String()}, creds
}

// checkLockedDown: a server's effective configuration lets nobody in
// without credentials. The ledger's two users log in with the passwords of
// the setup's credentials (stored as bcrypt hashes), every other client is
// sent to the ledger's auth callout, routes log in as the route user, and
// there is no anonymous way in: no no_auth_user, no user without a
// password, no single user or token of the server's own.
func checkLockedDown(t *testing.T, name string, opts *server.Options, creds natsaccess.Credentials, verified *bcryptChecks) {
	t.Helper()
	var accounts []string
	for _, a := range opts.Accounts {
		accounts = append(accounts, a.Name)
	}
	for _, want := range []string{natsaccess.LedgerAccount, natsaccess.ServicesAccount, natsaccess.SystemAccount} {
		if !slices.Contains(accounts, want) {
			t.Errorf("%s: no account %s (accounts %v): it does not include %s", name, want, accounts, natsAccountsFile)
		}
	}
	if opts.SystemAccount != natsaccess.SystemAccount {
		t.Errorf("%s: system account %q, want %s", name, opts.SystemAccount, natsaccess.SystemAccount)
	}
	if opts.NoAuthUser != "" {
		t.Errorf("%s: no_auth_user %q: clients without credentials get in as that user", name, opts.NoAuthUser)
	}
	if opts.Username != "" || opts.Password != "" || opts.Authorization != "" || len(opts.Nkeys) > 0 {
		t.Errorf("%s: credentials besides the ledger's users (a single user, a token or nkeys): they would bypass the callout", name)
	}
	passwords := map[string]struct{ account, password string }{
		natsaccess.LedgerUser: {natsaccess.LedgerAccount, creds.LedgerPassword},
		natsaccess.SystemUser: {natsaccess.SystemAccount, creds.SystemPassword},
	}
	var users []string
	for _, u := range opts.Users {
		users = append(users, u.Username)
		want, ok := passwords[u.Username]
		switch {
		case !ok:
			t.Errorf("%s: user %q: only the ledger's users log in with a password, others through the callout", name, u.Username)
		case u.Account == nil || u.Account.Name != want.account:
			t.Errorf("%s: user %s is not in account %s", name, u.Username, want.account)
		default:
			verified.check(fmt.Sprintf("%s: user %s", name, u.Username), u.Password, want.password)
		}
	}
	slices.Sort(users)
	if want := []string{natsaccess.LedgerUser, natsaccess.SystemUser}; !slices.Equal(users, want) {
		t.Errorf("%s: users %v, want %v", name, users, want)
	}
	issuer, err := creds.Issuer()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := issuer.PublicKey()
	switch c := opts.AuthCallout; {
	case c == nil:
		t.Errorf("%s: no auth_callout: services cannot log in with their tokens, and the servers would be open without the accounts", name)
	case c.Issuer != pub || c.Account != natsaccess.LedgerAccount:
		t.Errorf("%s: auth_callout issuer %s in account %s, want the setup's issuer %s in %s", name, c.Issuer, c.Account, pub, natsaccess.LedgerAccount)
	case !slices.Equal(slices.Sorted(slices.Values(c.AuthUsers)), []string{natsaccess.LedgerUser, natsaccess.SystemUser}):
		t.Errorf("%s: auth_callout auth_users %v: every user but the ledger's must go through the callout", name, c.AuthUsers)
	case len(c.AllowedAccounts) > 0:
		t.Errorf("%s: auth_callout allowed_accounts %v: the callout must cover every account", name, c.AllowedAccounts)
	}
	if opts.Cluster.Username != natsaccess.RouteUser {
		t.Errorf("%s: cluster authorization user %q, want %s: without it any server that reaches port %d joins the cluster (include %s in cluster { })", name, opts.Cluster.Username, natsaccess.RouteUser, opts.Cluster.Port, natsRoutesFile)
	} else {
		verified.check(name+": cluster authorization", opts.Cluster.Password, creds.RoutePassword)
	}
}

// bcryptChecks checks configured passwords against the secrets, each hash
// once (the servers share one file).
type bcryptChecks struct {
	t    *testing.T
	done map[[2]string]bool
}

func (b *bcryptChecks) check(what, hash, password string) {
	b.t.Helper()
	if !strings.HasPrefix(hash, "$2") {
		b.t.Errorf("%s: the password is not a bcrypt hash: the configuration must not hold the secret", what)
		return
	}
	key := [2]string{hash, password}
	if _, ok := b.done[key]; !ok {
		b.done[key] = bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
	}
	if !b.done[key] {
		b.t.Errorf("%s: the hash is not that of the password in %s", what, natsCredentialsFile)
	}
}

// checkPublishedOnLoopback: a service publishes ports on 127.0.0.1 (or
// ::1) only. An empty host_ip is every address of the host.
func checkPublishedOnLoopback(t *testing.T, svc types.ServiceConfig) {
	t.Helper()
	for _, p := range svc.Ports {
		if ip := net.ParseIP(p.HostIP); ip == nil || !ip.IsLoopback() {
			t.Errorf("%s: port %d published on %q, want 127.0.0.1: only this host's clients may reach it", svc.Name, p.Target, cmp.Or(p.HostIP, "every address"))
		}
	}
}

// The image compose builds is the ledger's binary, run as a non-root user;
// run alone, it keeps its embedded NATS server on the container's loopback.
func TestDockerfileBuildsTheLedgerAndRunsItAsNonRoot(t *testing.T) {
	stages := dockerfileStages(t)
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
	var copied, user, entry, command string
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
		case "CMD":
			command = strings.TrimSpace(l[len(f[0]):])
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

	// CMD: serve, its embedded NATS server on loopback (publishing it is a
	// choice made on purpose, with --nats-listen).
	var args []string
	if err := json.Unmarshal([]byte(command), &args); err != nil || len(args) == 0 || args[0] != "serve" {
		t.Fatalf("CMD %q, want the exec form [\"serve\", ...]", command)
	}
	serve := newServeCmd(io.Discard, io.Discard, new(bool))
	if err := serve.ParseFlags(args[1:]); err != nil {
		t.Fatalf("CMD %q: %v", command, err)
	}
	if listen := serve.Flags().Lookup("nats-listen").Value.String(); !loopbackAddr(listen) {
		t.Errorf("CMD: --nats-listen %s, want 127.0.0.1:PORT: anyone reaching the container would reach NATS", listen)
	}
	if u := serve.Flags().Lookup("nats-url").Value.String(); u != "" {
		t.Errorf("CMD: --nats-url %s, want the embedded server", u)
	}
}

// loopbackAddr: host:port with a loopback host.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// dockerfileStages is the Dockerfile's instructions, stage by stage, FROM
// first, without comments.
func dockerfileStages(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string
	var cont string // a line continued with a backslash
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if l, ok := strings.CutSuffix(line, "\\"); ok {
			cont += l + " "
			continue
		}
		line, cont = cont+line, ""
		switch {
		case strings.HasPrefix(strings.ToUpper(line), "FROM "):
			stages = append(stages, []string{line})
		case len(stages) > 0:
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	return stages
}

// checkImageOwns: the image's runtime stage makes dir and gives it to its
// user. A named volume mounted there starts as a copy of it; were it
// missing, Docker would make it root's, and the ledger, run as its
// unprivileged user, could not write in it.
func checkImageOwns(t *testing.T, svc, dir string) {
	t.Helper()
	stages := dockerfileStages(t)
	if len(stages) == 0 {
		t.Fatal("Dockerfile has no stage")
	}
	var user, owner string
	made := false
	for _, l := range stages[len(stages)-1] {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "USER":
			user, _, _ = strings.Cut(f[1], ":")
		case "RUN":
			for _, cmd := range strings.Split(l[len(f[0]):], "&&") {
				words := strings.Fields(cmd)
				if len(words) < 2 || !slices.Contains(words, filepath.Clean(dir)) {
					continue
				}
				switch words[0] {
				case "mkdir":
					made = true
				case "chown":
					for _, w := range words[1:] {
						if !strings.HasPrefix(w, "-") {
							owner, _, _ = strings.Cut(w, ":")
							break
						}
					}
				}
			}
		}
	}
	if !made || owner == "" || owner != user || user == "root" {
		t.Errorf("%s writes into %s as the image's user %q: the Dockerfile's runtime stage must mkdir it and chown it to that user (mkdir: %v, chown to %q)", svc, dir, user, made, owner)
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

// composeFS stands in for the files compose gives its containers: each
// named volume is a temporary directory shared by the services that mount
// it, and bind mounts come from the repository.
type composeFS struct {
	t       *testing.T
	volumes map[string]string // named volume -> its directory
}

func (fs *composeFS) volume(name string) string {
	if dir, ok := fs.volumes[name]; ok {
		return dir
	}
	dir := fs.t.TempDir()
	fs.volumes[name] = dir
	return dir
}

// hostPath is where path, inside svc's container, is here: under the
// mount that holds it.
func (fs *composeFS) hostPath(svc types.ServiceConfig, path string) (string, bool) {
	v := volumeContaining(svc, path)
	if v == nil {
		return "", false
	}
	rel, _ := filepath.Rel(filepath.Clean(v.Target), filepath.Clean(path))
	switch v.Type {
	case types.VolumeTypeVolume:
		return filepath.Join(fs.volume(v.Source), rel), true
	case types.VolumeTypeBind:
		return filepath.Join(v.Source, rel), true
	}
	return "", false
}

// root lays out svc's mounts under a temporary directory, each at its
// target (a file bound is copied, a directory or volume linked), so that
// what a program in the container finds relative to a path is found here
// relative to root+path: nats-server's includes, for one.
func (fs *composeFS) root(svc types.ServiceConfig) string {
	fs.t.Helper()
	root := fs.t.TempDir()
	mounts := slices.Clone(svc.Volumes)
	slices.SortFunc(mounts, func(a, b types.ServiceVolumeConfig) int { return cmp.Compare(a.Target, b.Target) })
	for i, v := range mounts {
		for _, outer := range mounts[:i] {
			if strings.HasPrefix(filepath.Clean(v.Target), filepath.Clean(outer.Target)+"/") {
				fs.t.Fatalf("%s: %s is mounted inside %s: this test does not lay out nested mounts", svc.Name, v.Target, outer.Target)
			}
		}
		dst := filepath.Join(root, v.Target)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			fs.t.Fatal(err)
		}
		src, _ := fs.hostPath(svc, v.Target)
		info, err := os.Stat(src)
		switch {
		case err != nil:
			fs.t.Fatalf("%s: mount %s: %v", svc.Name, v.Target, err)
		case info.Mode().IsRegular():
			b, err := os.ReadFile(src)
			if err == nil {
				err = os.WriteFile(dst, b, 0o600)
			}
			if err != nil {
				fs.t.Fatal(err)
			}
		default:
			if err := os.Symlink(src, dst); err != nil {
				fs.t.Fatal(err)
			}
		}
	}
	return root
}

// natsOptions is what a NATS service's server runs with: its command line,
// and the configuration file it names with its includes, laid out as the
// service's mounts lay them out, read by nats-server's own parser
// (ConfigureOptions: ProcessConfigFile, then the flags over it).
func natsOptions(t *testing.T, svc types.ServiceConfig, fs *composeFS) *server.Options {
	t.Helper()
	args := slices.Clone([]string(svc.Command))
	if len(args) > 0 && args[0] == "nats-server" {
		args = args[1:]
	}
	root := fs.root(svc)
	for i, a := range args {
		if (a == "-c" || a == "--config" || a == "-config") && i+1 < len(args) {
			vol := volumeAt(svc, args[i+1])
			if vol == nil || vol.Type != types.VolumeTypeBind {
				t.Fatalf("%s: its configuration %s is not bound from the repository", svc.Name, args[i+1])
			}
			args[i+1] = filepath.Join(root, args[i+1])
		}
	}
	flags := flag.NewFlagSet(svc.Name, flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	opts, err := server.ConfigureOptions(flags, args, func() {}, func() {}, func() {})
	if err != nil {
		t.Fatalf("%s: nats-server %q: %v", svc.Name, svc.Command, err)
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

// volumeContaining is the service's volume that holds path: mounted at it
// or at a directory above it (the deepest, as in a container).
func volumeContaining(svc types.ServiceConfig, path string) *types.ServiceVolumeConfig {
	var found *types.ServiceVolumeConfig
	path = filepath.Clean(path)
	for i, v := range svc.Volumes {
		target := filepath.Clean(v.Target)
		if (path == target || strings.HasPrefix(path, target+"/")) && (found == nil || len(target) > len(filepath.Clean(found.Target))) {
			found = &svc.Volumes[i]
		}
	}
	return found
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
