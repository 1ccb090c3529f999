package natsaccess

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/bcrypt"
)

// The accounts and users ServerConfig declares.
const (
	LedgerAccount   = "LEDGER"
	ServicesAccount = "SERVICES"
	// MirrorAccount holds the services' mirror and their consumers.
	MirrorAccount = "MIRROR"
	SystemAccount = "SYS"
	LedgerUser    = "ledger"
	SystemUser    = "ledger-sys"
	RouteUser     = "ledger-route"
	// ServicesAPIPrefix is where the ledger reaches the services' JetStream
	// API (to keep their mirror), and LedgerAPIPrefix where the mirror
	// reaches the ledger's (to read the stream).
	ServicesAPIPrefix = "$JS.SERVICES.API"
	LedgerAPIPrefix   = "$JS.LEDGER.API"
	// ServicesMaxConsumers bounds the consumers on the services' stream, all
	// services together (MaxConsumers bounds each token's).
	ServicesMaxConsumers = 4096
)

// Credentials are the secrets of a NATS deployment: the ledger's and the
// system user's passwords, the key that signs the callout's answers, and
// the routes' password. ServerConfig puts only their hashes and public key
// in the servers' configuration.
type Credentials struct {
	LedgerPassword string `json:"ledger_password"`
	SystemPassword string `json:"system_password"`
	RoutePassword  string `json:"route_password"`
	// IssuerSeed is an account nkey seed: the servers accept a callout
	// answer only if this key signed it.
	IssuerSeed string `json:"issuer_seed"`
}

// NewCredentials makes fresh random credentials.
func NewCredentials() (Credentials, error) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		return Credentials{}, fmt.Errorf("callout issuer key: %w", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return Credentials{}, fmt.Errorf("callout issuer key: %w", err)
	}
	return Credentials{
		LedgerPassword: rand.Text(),
		SystemPassword: rand.Text(),
		RoutePassword:  rand.Text(),
		IssuerSeed:     string(seed),
	}, nil
}

// LoadCredentials reads a file written by Save.
func LoadCredentials(path string) (Credentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Credentials{}, fmt.Errorf("NATS credentials: %w", err)
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return Credentials{}, fmt.Errorf("NATS credentials %s: %w", path, err)
	}
	if err := c.validate(); err != nil {
		return Credentials{}, fmt.Errorf("NATS credentials %s: %w", path, err)
	}
	return c, nil
}

func (c Credentials) validate() error {
	var errs []error
	for name, v := range map[string]string{"ledger_password": c.LedgerPassword, "system_password": c.SystemPassword, "route_password": c.RoutePassword} {
		if len(v) < 16 {
			errs = append(errs, fmt.Errorf("%s must be at least 16 characters", name))
		}
	}
	if _, err := c.Issuer(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Save writes the credentials readable by their owner only.
func (c Credentials) Save(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// Issuer is the key pair that signs callout answers.
func (c Credentials) Issuer() (nkeys.KeyPair, error) {
	kp, err := nkeys.FromSeed([]byte(c.IssuerSeed))
	if err != nil {
		return nil, fmt.Errorf("issuer_seed: %w", err)
	}
	if pub, err := kp.PublicKey(); err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, errors.New("issuer_seed must be an account nkey seed (SA...)")
	}
	return kp, nil
}

// ServerConfig is the part of a nats-server configuration that makes the
// ledger's accounts and sends every other client to the ledger's callout.
// Every server of a cluster needs the same text; stream is the ledger's
// stream name (--stream). Passwords are bcrypt hashes: the text goes into
// files.
func (c Credentials) ServerConfig(stream string) (string, error) {
	return c.serverConfig(stream, hash)
}

// EmbeddedConfig is ServerConfig for a server in the ledger's own process:
// the text never leaves memory, so passwords stay as they are, and the
// ledger connects without a bcrypt check (hundreds of milliseconds, seconds
// under the race detector).
func (c Credentials) EmbeddedConfig(stream string) (string, error) {
	return c.serverConfig(stream, func(p string) (string, error) { return p, nil })
}

func (c Credentials) serverConfig(stream string, hash func(string) (string, error)) (string, error) {
	kp, err := c.Issuer()
	if err != nil {
		return "", err
	}
	issuer, err := kp.PublicKey()
	if err != nil {
		return "", err
	}
	ledgerHash, err := hash(c.LedgerPassword)
	if err != nil {
		return "", err
	}
	sysHash, err := hash(c.SystemPassword)
	if err != nil {
		return "", err
	}
	r := strings.NewReplacer(
		"{{STREAM}}", stream,
		"{{ISSUER}}", issuer,
		"{{LEDGER_HASH}}", ledgerHash,
		"{{SYS_HASH}}", sysHash,
		"{{SERVICES_MAX_CONSUMERS}}", strconv.Itoa(ServicesMaxConsumers),
	)
	return r.Replace(serverConfigTemplate), nil
}

// RoutesConfig is the authorization block for a cluster's routes: put it
// inside the cluster block of every server, and give the routes
// RouteURL's user and password.
func (c Credentials) RoutesConfig() (string, error) {
	h, err := hash(c.RoutePassword)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("authorization {\n  user: %q\n  password: %q\n}\n", RouteUser, h), nil
}

// hash is bcrypt at its lowest cost: the passwords are 130 random bits
// (rand.Text), which no cost factor makes safer, and a server checks the
// hash on every connect, within a second (nats-server's first ping) even on
// a slow machine.
func hash(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return "", fmt.Errorf("hash a NATS password: %w", err)
	}
	return string(h), nil
}

// The accounts, in the order a reader needs them. Exports name the one
// account that may import them, and the imports rename what they bring in
// so nothing shadows an account's own JetStream API.
const serverConfigTemplate = `# TokenLedger's NATS accounts and authorization (made by ledger nats setup).
# The same text on every server of a cluster. Passwords are bcrypt hashes;
# the secrets themselves are in the ledger's credentials file.
system_account: SYS

accounts {
  # The servers' system account. The ledger logs in here to find and cut
  # service connections whose token was rotated, deleted or changed.
  SYS {
    users: [ {user: "ledger-sys", password: "{{SYS_HASH}}"} ]
  }

  # The stream, the source of truth, and the ledger's own consumers. Only
  # the ledger logs in here.
  LEDGER {
    jetstream: enabled
    users: [ {user: "ledger", password: "{{LEDGER_HASH}}"} ]
    exports: [
      # What the services' mirror needs to read the stream: creating its
      # (unnamed) consumer, flow control, and the deliveries.
      {service: "$JS.API.CONSUMER.CREATE.{{STREAM}}", accounts: [MIRROR]}
      {service: "$JS.FC.{{STREAM}}.>", accounts: [MIRROR]}
      {stream: "tokenledger.mirror.{{STREAM}}.>", accounts: [MIRROR]}
    ]
    imports: [
      # The ledger keeps the services' mirror through their JetStream API.
      {service: {account: MIRROR, subject: "$JS.API.>"}, to: "$JS.SERVICES.API.>"}
    ]
  }

  # The services' mirror of the stream and their consumers. Nobody logs in
  # here: services reach their consumers only through the four imports of
  # SERVICES below (create with a filter, info, next, ack; no delete), and
  # the ledger keeps the mirror through LEDGER's import. The server answers
  # a pull request to whatever reply subject a service named, from inside
  # the account it was made in: were the consumers in SERVICES, a reply
  # subject of $JS.API.STREAM.DELETE.<stream> would delete the mirror.
  MIRROR {
    jetstream: {max_mem: 64M, max_file: -1, max_streams: 1, max_consumers: {{SERVICES_MAX_CONSUMERS}}}
    exports: [
      {service: "$JS.API.>", accounts: [LEDGER]}
      {service: "$JS.API.CONSUMER.CREATE.{{STREAM}}.*.>", accounts: [SERVICES]}
      {service: "$JS.API.CONSUMER.INFO.{{STREAM}}.*", accounts: [SERVICES]}
      {service: "$JS.API.CONSUMER.MSG.NEXT.{{STREAM}}.*", accounts: [SERVICES], response_type: stream}
      {service: "$JS.ACK.{{STREAM}}.>", accounts: [SERVICES]}
    ]
    imports: [
      {service: {account: LEDGER, subject: "$JS.API.CONSUMER.CREATE.{{STREAM}}"}, to: "$JS.LEDGER.API.CONSUMER.CREATE.{{STREAM}}"}
      {service: {account: LEDGER, subject: "$JS.FC.{{STREAM}}.>"}}
      {stream: {account: LEDGER, subject: "tokenledger.mirror.{{STREAM}}.>"}}
    ]
  }

  # The services. Nobody logs in here with a password: every connection
  # comes through the ledger's callout, with permissions from its token.
  # No JetStream of its own: what it may do with its consumers is what it
  # imports from MIRROR, and its permissions narrow that to the token's.
  # Services use the API prefix $JS.SVC.API (natsaccess.JetStream): their
  # own $JS.API is the server's "JetStream not enabled" answer, which is
  # also all a status message sent there on their behalf can reach.
  SERVICES {
    imports: [
      {service: {account: MIRROR, subject: "$JS.API.CONSUMER.CREATE.{{STREAM}}.*.>"}, to: "$JS.SVC.API.CONSUMER.CREATE.{{STREAM}}.*.>"}
      {service: {account: MIRROR, subject: "$JS.API.CONSUMER.INFO.{{STREAM}}.*"}, to: "$JS.SVC.API.CONSUMER.INFO.{{STREAM}}.*"}
      {service: {account: MIRROR, subject: "$JS.API.CONSUMER.MSG.NEXT.{{STREAM}}.*"}, to: "$JS.SVC.API.CONSUMER.MSG.NEXT.{{STREAM}}.*"}
      {service: {account: MIRROR, subject: "$JS.ACK.{{STREAM}}.>"}}
    ]
  }
}

authorization {
  # Every client but the ledger's two users is asked about: the ledger
  # answers with a user in SERVICES whose permissions come from the token
  # it presented, or refuses it. There is no anonymous user.
  auth_callout {
    issuer: "{{ISSUER}}"
    auth_users: [ "ledger", "ledger-sys" ]
    account: LEDGER
  }
}
`

// MirrorDeliverPrefix is where the ledger's stream delivers to the
// services' mirror.
func MirrorDeliverPrefix(stream string) string { return "tokenledger.mirror." + stream }
