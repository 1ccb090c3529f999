package node

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/eventstore"
	"github.com/tokenledger/tokenledger/projections"
)

// bootstrapFileName is where a ledger on embedded NATS keeps the first owner
// token's secret, in its data directory.
const bootstrapFileName = "bootstrap-token"

// bootstrapFile makes the first owner token of an empty ledger and returns
// final, the path of the file holding its secret. The secret is written (to
// final.pending, synced) before the token is appended, and renamed into
// place after. The .pending file is removed only when the token certainly
// was not stored; after a crash or an append whose outcome is unknown, the
// next start keeps it if it holds the active bootstrap token of this
// organization.
func bootstrapFile(ctx context.Context, ledger *app.Ledger, org, final string, log *slog.Logger) (string, error) {
	pending := final + ".pending"
	if b, err := os.ReadFile(pending); err == nil {
		// No request brought this secret: an empty source.
		tok, aerr := ledger.Authenticate(strings.TrimSpace(string(b)), app.Source{})
		_, ferr := os.Stat(final)
		if aerr == nil && os.IsNotExist(ferr) && isBootstrapToken(tok, org) {
			if err := renameSynced(pending, final); err != nil {
				return "", err
			}
			log.Info("recovered the bootstrap token saved before a crash", "file", final)
			return final, nil
		}
		if aerr != nil && !errors.Is(aerr, app.ErrUnauthenticated) {
			// Not known to be void (the ledger could not tell: stale, NATS
			// away): it may be the only copy of the owner's secret.
			return "", fmt.Errorf("bootstrap token: cannot tell whether %s holds the active bootstrap token yet: %w", pending, aerr)
		}
		_ = os.Remove(pending)
	}
	saved := false
	tok, _, err := ledger.Bootstrap(ctx, org, func(s domain.Secret) error {
		if err := writeSecretFile(pending, s.Reveal()); err != nil {
			return err
		}
		saved = true
		return nil
	})
	switch {
	case err != nil && saved:
		// The append may have been stored all the same: keep the secret for
		// the next start to recover.
		return "", fmt.Errorf("%w (its secret is kept in %s until a start can tell)", err, pending)
	case err != nil:
		_ = os.Remove(pending)
		return "", err
	case tok == nil:
		_ = os.Remove(pending) // not an empty ledger, or another ledger won
		return "", nil
	}
	if err := renameSynced(pending, final); err != nil {
		return "", fmt.Errorf("bootstrap token: %w", err)
	}
	log.Info("bootstrap token created", "token_id", tok.ID(), "organization", org, "file", final)
	return final, nil
}

func isBootstrapToken(t *domain.Token, org string) bool {
	return t.OrganizationID() == org && t.Name() == "bootstrap" && t.Role() == domain.RoleOrganizationOwner
}

// Bootstrapped says what Bootstrap found or did.
type Bootstrapped struct {
	// Created: this call made the bootstrap token (and wrote its secret).
	// Otherwise the stream already had events, and the rest describes its
	// first one: the bootstrap token, unless something else wrote first.
	Created bool
	// Recovered: the stream already had the token, and the secret file a
	// bootstrap interrupted after the append had left (Out + ".pending")
	// was put in place.
	Recovered bool
	// The token (its id, organization, name, and its secret's fingerprint,
	// which `ledger token verify` prints for a secret) and the stream
	// sequence it was created at.
	TokenID, Organization, Name, Fingerprint string
	Sequence                                 uint64
	// LastSequence is how far the stream reached.
	LastSequence uint64
	// IsBootstrap: the first event made a token as a bootstrap does (named
	// "bootstrap", ORGANIZATION_OWNER).
	IsBootstrap bool
}

// ErrVoidSecret: the secret Bootstrap wrote to its writer is not stored
// (another bootstrap won the race), or may not be (the append's outcome is
// unknown); the error says which and how to tell.
var ErrVoidSecret = errors.New("the secret written is not, or may not be, a stored token's")

// Bootstrap makes the first ORGANIZATION_OWNER token of cfg.Org on a stream
// of your NATS (cfg.NATSURL), for `ledger bootstrap`: it waits for the
// servers as Start does, creates the stream if it is not there, and if it
// holds no event stores the token, exactly once whichever of several
// ledgers or bootstraps runs at the same moment (the append expects an
// empty stream). The secret goes to the file out (mode 0600, written and
// synced before the token is stored, so a crash cannot leave a token whose
// secret is lost; a later run finds it) or, when out is "", to stdout,
// also before the token is stored: a secret that could not be written is
// never a token's. If the stream already has events, Bootstrap writes
// nothing and says what its first one is.
func Bootstrap(ctx context.Context, cfg Config, out string, stdout io.Writer, log *slog.Logger) (Bootstrapped, error) {
	if cfg.NATSURL == "" || cfg.Credentials == nil {
		return Bootstrapped{}, errors.New("bootstrap needs a NATS URL and its credentials: with embedded NATS, `ledger serve` bootstraps by itself")
	}
	// Before waiting on anything: a configuration the stream refuses would
	// otherwise be tried again until ctx ends.
	if err := cfg.streamConfig().Validate(); err != nil {
		return Bootstrapped{}, fmt.Errorf("bootstrap configuration: %w", err)
	}
	if out != "" {
		unlock, err := lockWaiting(out + ".lock")
		if err != nil {
			return Bootstrapped{}, err
		}
		defer unlock()
	}
	conns, err := connect(ctx, cfg, nil, *cfg.Credentials, log)
	if err != nil {
		return Bootstrapped{}, err
	}
	defer conns.Close()
	js, err := jetstream.New(conns.Ledger)
	if err != nil {
		return Bootstrapped{}, err
	}
	store, err := openStream(ctx, js, cfg, log)
	if err != nil {
		return Bootstrapped{}, err
	}
	var last uint64
	if err := waitFor(ctx, log, "the last sequence of stream "+cfg.Stream, func(ctx context.Context) error {
		last, err = store.LastSequence(ctx)
		return err
	}); err != nil {
		return Bootstrapped{}, err
	}
	if last > 0 {
		return bootstrappedAlready(ctx, store, last, out, log)
	}

	// Nothing reads this ledger's view, so it is not fed: Bootstrap's wait
	// for the view to show the new token (which a serving ledger needs before
	// it answers) ends at once, and no consumer is left on the stream for
	// its inactive threshold (5 minutes) after this process ends.
	ledger := app.New(store, projections.NewTokens(), append([]app.Option{
		app.WithConnectionCheck(natsConnected(conns.Ledger)), app.WithReadWait(0),
	}, cfg.AppOptions...)...)
	defer ledger.Close()

	pending := out + ".pending"
	var fingerprint string
	saved := false
	tok, _, err := ledger.Bootstrap(ctx, cfg.Org, func(s domain.Secret) error {
		fingerprint = domain.Fingerprint(s.Reveal())
		if out != "" {
			if err := writeSecretFile(pending, s.Reveal()); err != nil {
				return err
			}
		} else if _, err := io.WriteString(stdout, s.Reveal()+"\n"); err != nil {
			return fmt.Errorf("write the secret: %w", err)
		}
		saved = true
		return nil
	})
	switch {
	case err != nil && saved && out != "":
		return Bootstrapped{}, fmt.Errorf("%w (its secret is kept in %s: run bootstrap again with the same --out, and it puts the file in place if the token was stored)", err, pending)
	case err != nil && saved:
		return Bootstrapped{}, fmt.Errorf("%w: %w: the token may have been stored all the same. Run bootstrap again: if it reports the bootstrap token with fingerprint %s, the secret written above is that token's; otherwise it is void", ErrVoidSecret, err, fingerprint)
	case err != nil:
		if out != "" {
			_ = os.Remove(pending)
		}
		return Bootstrapped{}, err
	case tok == nil:
		// Between our look and our append, another ledger stored a first
		// event: ours was not stored.
		if out != "" {
			_ = os.Remove(pending)
		}
		now, lerr := store.LastSequence(ctx)
		if lerr != nil {
			now = 1 // at least the other one's
		}
		b, ferr := bootstrappedAlready(ctx, store, now, "", log)
		if ferr != nil {
			return Bootstrapped{}, ferr
		}
		if out == "" && saved {
			return b, fmt.Errorf("%w: another bootstrap stored token %s first, so the secret written above (fingerprint %s) is not a token's", ErrVoidSecret, b.TokenID, fingerprint)
		}
		return b, nil
	}
	if out != "" {
		if err := renameSynced(pending, out); err != nil {
			return Bootstrapped{}, fmt.Errorf("bootstrap token %s is stored and its secret is in %s, which could not be renamed to %s: %w", tok.ID(), pending, out, err)
		}
	}
	log.Info("bootstrap token created", "token_id", tok.ID(), "organization", cfg.Org, "stream", cfg.Stream)
	return Bootstrapped{Created: true, TokenID: tok.ID(), Organization: tok.OrganizationID(), Name: tok.Name(), Fingerprint: fingerprint,
		Sequence: 1, LastSequence: 1, IsBootstrap: true}, nil
}

// bootstrappedAlready describes the stream's first event. A secret left in
// out.pending by a bootstrap interrupted after its append is put in place
// when it is that token's (its hash is the one the event stored), and
// removed otherwise: it is then no token's.
func bootstrappedAlready(ctx context.Context, store *eventstore.Store, last uint64, out string, log *slog.Logger) (Bootstrapped, error) {
	var first eventstore.Recorded
	if err := waitFor(ctx, log, "the first event of stream "+store.Config().Stream, func(ctx context.Context) error {
		var err error
		first, err = store.Get(ctx, 1)
		return err
	}); err != nil {
		return Bootstrapped{}, err
	}
	b := Bootstrapped{Sequence: first.Sequence, LastSequence: last, TokenID: first.Event.TokenID, Organization: first.Event.OrganizationID}
	var created *domain.CreatedData
	if c, ok := first.Event.Data.(domain.CreatedData); ok {
		created = &c
	}
	if created != nil {
		b.Name, b.Fingerprint = created.Name, created.Fingerprint
		b.IsBootstrap = created.Name == "bootstrap" && created.Role == domain.RoleOrganizationOwner
	}
	if out == "" {
		return b, nil
	}
	pending := out + ".pending"
	secret, err := os.ReadFile(pending)
	if err != nil {
		return b, nil
	}
	if _, ferr := os.Stat(out); created != nil && os.IsNotExist(ferr) {
		h := domain.Hash(strings.TrimSpace(string(secret)))
		if subtle.ConstantTimeCompare(h[:], created.SecretHash[:]) == 1 {
			if err := renameSynced(pending, out); err != nil {
				return b, err
			}
			log.Info("recovered the bootstrap token's secret saved before an interrupted bootstrap", "file", out, "token_id", b.TokenID)
			b.Recovered = true
			return b, nil
		}
	}
	_ = os.Remove(pending)
	return b, nil
}

// renameSynced renames and syncs the directory, so the new name survives a
// power loss.
func renameSynced(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return syncDir(filepath.Dir(to))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeSecretFile writes a secret readable by its owner only. The file is
// created with mode 0600 before any byte is written.
func writeSecretFile(path, secret string) error {
	_ = os.Remove(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}
