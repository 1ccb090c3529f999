package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/natsaccess"
)

// Files `ledger nats setup` writes.
const (
	natsCredentialsFile = "nats-credentials.json"
	natsAccountsFile    = "nats-accounts.conf"
	natsRoutesFile      = "nats-routes.conf"
)

func newNATSCmd(stdout io.Writer, getenv func(string) string, started *bool) *cobra.Command {
	cmd := groupCmd("nats", "Set up NATS servers for the ledger, and connect services to them")
	cmd.AddCommand(newNATSSetupCmd(stdout, started), newNATSInboxCmd(stdout, getenv, started))
	return cmd
}

func newNATSSetupCmd(stdout io.Writer, started *bool) *cobra.Command {
	var stream string
	cmd := &cobra.Command{
		Use:   "setup DIR",
		Short: "Write the credentials and server configuration a NATS cluster needs to run the ledger",
		Long: `Writes into DIR:
  ` + natsCredentialsFile + `  the ledger's secrets (mode 0600): give it to every ledger
                         with --nats-credentials, and to nobody else
  ` + natsAccountsFile + `    include it in every server's configuration
                         (include ./` + natsAccountsFile + `)
  ` + natsRoutesFile + `      include it inside every server's cluster { } block, and give
                         the routes the user ledger-route and the route_password

An existing credentials file is kept and the two configuration files are
written from it again, so the command can run on every start.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			*started = true
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
			routes, err := creds.RoutesConfig()
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			for name, text := range map[string]string{natsAccountsFile: accounts, natsRoutesFile: routes} {
				// World-readable is fine: only hashes and a public key.
				if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
					return &exitError{code: exitFailed, msg: "error: " + err.Error()}
				}
			}
			fmt.Fprintf(stdout, "wrote %s (secret, mode 0600), %s and %s in %s\n", natsCredentialsFile, natsAccountsFile, natsRoutesFile, dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&stream, "stream", "TOKENS", "the ledger's stream name (ledger serve --stream)")
	return cmd
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
