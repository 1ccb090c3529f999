package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/natsaccess"
)

// Files `ledger nats setup` writes.
const (
	natsCredentialsFile = "nats-credentials.json"
	natsAccountsFile    = "nats-accounts.conf"
	natsRoutesFile      = "nats-routes.conf"
	// natsRouteURLsFile is written with --routes only: the routes with the
	// route user and its password, so secret too.
	natsRouteURLsFile = "nats-route-urls.conf"
)

func newNATSCmd(stdout io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	cmd := groupCmd("nats", "Set up NATS servers for the ledger, and connect services to them")
	cmd.AddCommand(newNATSSetupCmd(stdout, started), newNATSInboxCmd(stdout, getenv, started))
	return cmd
}

func newNATSSetupCmd(stdout io.Writer, started *bool) *cobra.Command {
	var stream string
	var routes []string
	cmd := &cobra.Command{
		Use:   "setup DIR",
		Short: "Write the credentials and server configuration a NATS cluster needs to run the ledger",
		Long: `Writes into DIR:
  ` + natsCredentialsFile + `  the ledger's secrets (mode 0600): give it to every ledger
                         with --nats-credentials, and to nobody else
  ` + natsAccountsFile + `     include it in every server's configuration
                         (include ./` + natsAccountsFile + `)
  ` + natsRoutesFile + `       include it inside every server's cluster { } block, and give
                         the routes the user ledger-route and the route_password
  ` + natsRouteURLsFile + `   with --routes only: the cluster's routes with that user and
                         password (secret, mode 0600); include it inside every
                         server's cluster { } block too, instead of a routes list

nats-server reads an include relative to the file that includes it: keep
these files beside the configuration (or below it), not at an absolute path.

An existing credentials file is kept and the configuration files are
written from it again, so the command can run on every start.`,
		Example: `  ledger nats setup /etc/nats/auth --routes nats-route://n1:6222,nats-route://n2:6222,nats-route://n3:6222`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			*started = true
			routeURLs, err := routeURLsConfig(routes)
			if err != nil {
				return usageError{fmt.Errorf("--routes: %w", err)}
			}
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			credPath := filepath.Join(dir, natsCredentialsFile)
			creds, err := natsaccess.LoadCredentials(credPath)
			if errors.Is(err, os.ErrNotExist) {
				if creds, err = natsaccess.NewCredentials(); err == nil {
					err = creds.Save(credPath)
				}
			}
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			accounts, err := creds.ServerConfig(stream)
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			routeAuth, err := creds.RoutesConfig()
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			type file struct {
				name, text string
				mode       os.FileMode
			}
			files := []file{
				// World-readable is fine: only hashes and a public key.
				{natsAccountsFile, accounts, 0o644},
				{natsRoutesFile, routeAuth, 0o644},
			}
			if routeURLs != nil {
				files = append(files, file{natsRouteURLsFile, routeURLs(creds.RoutePassword), 0o600})
			}
			var written []string
			for _, f := range files {
				// Whole or not at all: a server (re)starting meanwhile reads
				// the old file or the new one, never half of one.
				if err := writeConfigFile(filepath.Join(dir, f.name), []byte(f.text), f.mode); err != nil {
					return &exitError{code: exitFailed, msg: "error: " + err.Error()}
				}
				written = append(written, f.name)
			}
			fmt.Fprintf(stdout, "wrote %s (secret, mode 0600), %s in %s\n", natsCredentialsFile, strings.Join(written, ", "), dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&stream, "stream", "TOKENS", "the ledger's stream name (ledger serve --stream)")
	cmd.Flags().StringSliceVar(&routes, "routes", nil, "the cluster's routes, nats-route://HOST:PORT (comma-separated or repeated): also write "+natsRouteURLsFile+" with them and the route user's password")
	return cmd
}

// routeURLsConfig checks the routes given to setup and returns what makes
// their configuration from the route password (nil without routes).
func routeURLsConfig(routes []string) (func(password string) string, error) {
	if len(routes) == 0 {
		return nil, nil
	}
	var urls []*url.URL
	for _, r := range routes {
		u, err := url.Parse(r)
		switch {
		case err != nil:
			return nil, err
		case u.Scheme != "nats-route" && u.Scheme != "nats":
			return nil, fmt.Errorf("%q: want nats-route://HOST:PORT", r)
		case u.User != nil:
			return nil, fmt.Errorf("%q: give the route without a user; setup adds %s and its password", r, natsaccess.RouteUser)
		case u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
			return nil, fmt.Errorf("%q: want nats-route://HOST:PORT", r)
		}
		urls = append(urls, u)
	}
	return func(password string) string {
		var b strings.Builder
		b.WriteString("# The cluster's routes with the route user's password (made by ledger nats\n")
		b.WriteString("# setup --routes). Secret: include it inside the cluster { } block of every\n")
		b.WriteString("# server, beside " + natsRoutesFile + ".\n")
		b.WriteString("routes: [\n")
		for _, u := range urls {
			r := url.URL{Scheme: u.Scheme, User: url.UserPassword(natsaccess.RouteUser, password), Host: u.Host}
			fmt.Fprintf(&b, "  %q\n", r.String())
		}
		b.WriteString("]\n")
		return b.String()
	}, nil
}

// writeConfigFile writes a file by renaming a synced temporary file with
// the final mode over it (a temporary file starts at 0600, so a secret is
// never readable by others on the way).
func writeConfigFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func newNATSInboxCmd(stdout io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	return &cobra.Command{
		Use:   "inbox-prefix",
		Short: "Print the inbox prefix NATS allows the token in LEDGER_API_TOKEN (for nats --inbox-prefix)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			*started = true
			secret := getenv("LEDGER_API_TOKEN")
			if secret == "" {
				return usageError{errors.New("LEDGER_API_TOKEN is not set")}
			}
			fmt.Fprintln(stdout, natsaccess.InboxPrefix(secret))
			return nil
		},
	}
}
