package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tokenledger/tokenledger/natsaccess"
	"github.com/tokenledger/tokenledger/node"
)

func newBootstrapCmd(stdout, stderr io.Writer, started *bool) *cobra.Command {
	var natsURL, credentials, org, stream, out string
	var replicas int
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Make the first ORGANIZATION_OWNER token of a ledger on your NATS (--nats-url), once: run it again and it says the ledger has one",
		Long: `Make the first ORGANIZATION_OWNER token, named bootstrap, on the stream of
ledgers that run with --nats-url (those do not make it themselves, so that
of N instances exactly one token is made, and its secret lands in one known
place). Waits for the servers as serve does, creates the stream if it is not
there yet, and stores the token only if the stream holds no event.

The secret goes to --out (mode 0600, written and synced before the token is
stored: if the bootstrap is interrupted after that, running it again with
the same --out puts the file in place), or without --out to stdout, alone
on one line; everything else goes to stderr. If the stream already has
events it writes nothing, says which token it starts with, and exits 0, so
an init container may run it at every start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			*started = true
			if natsURL == "" || credentials == "" {
				return usageError{errors.New("bootstrap needs --nats-url and --nats-credentials (with embedded NATS, `ledger serve` makes the first token itself)")}
			}
			creds, err := natsaccess.LoadCredentials(credentials)
			if err != nil {
				return &exitError{code: exitFailed, msg: fmt.Sprintf("error: --nats-credentials: %v", err)}
			}
			cfg := node.DefaultConfig()
			cfg.NATSURL, cfg.Credentials, cfg.Org, cfg.Stream, cfg.Replicas = natsURL, &creds, org, stream, replicas
			notes := stdout // stdout holds the secret alone when there is no --out
			if out == "" {
				notes = stderr
			}
			b, err := node.Bootstrap(cmd.Context(), cfg, out, stdout, slog.New(slog.NewTextHandler(stderr, nil)))
			if err != nil {
				return &exitError{code: exitFailed, msg: "error: " + err.Error()}
			}
			switch {
			case b.Created && out != "":
				fmt.Fprintf(notes, "bootstrap ORGANIZATION_OWNER token %s (organization %s, fingerprint %s) stored at sequence %d of stream %s; its secret is in %s (mode 0600)\n",
					b.TokenID, b.Organization, b.Fingerprint, b.Sequence, stream, out)
			case b.Created:
				fmt.Fprintf(notes, "bootstrap ORGANIZATION_OWNER token %s (organization %s, fingerprint %s) stored at sequence %d of stream %s; its secret is the line above, shown once\n",
					b.TokenID, b.Organization, b.Fingerprint, b.Sequence, stream)
			case b.Recovered:
				fmt.Fprintf(notes, "already bootstrapped: token %s (organization %s, fingerprint %s) at sequence %d of stream %s; the secret an interrupted bootstrap saved is now in %s\n",
					b.TokenID, b.Organization, b.Fingerprint, b.Sequence, stream, out)
			case b.IsBootstrap:
				fmt.Fprintf(notes, "already bootstrapped: token %s (organization %s, fingerprint %s) at sequence %d of stream %s (now at %d); nothing written\n",
					b.TokenID, b.Organization, b.Fingerprint, b.Sequence, stream, b.LastSequence)
			default:
				fmt.Fprintf(notes, "stream %s already holds events (up to sequence %d; the first is token %s of organization %s, not a bootstrap token): nothing written\n",
					stream, b.LastSequence, b.TokenID, b.Organization)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&natsURL, "nats-url", "", "the NATS server or cluster the ledgers use (a cluster: its URLs, comma-separated)")
	f.StringVar(&credentials, "nats-credentials", "", "the credentials file `ledger nats setup` wrote")
	f.StringVar(&org, "org", "default", "organization of the bootstrap token")
	f.StringVar(&stream, "stream", "TOKENS", "JetStream stream name, as the ledgers' --stream")
	f.IntVar(&replicas, "replicas", 1, "stream replicas, as the ledgers' --replicas (used if the stream is created here)")
	f.StringVar(&out, "out", "", "file for the secret (mode 0600); without it, stdout")
	return cmd
}
