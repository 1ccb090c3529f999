package natsaccess

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tokenledger/tokenledger/domain"
)

// Tokens is what the callout and the revoker ask of the ledger.
type Tokens interface {
	// Authenticate returns the token whose current secret this is, if the
	// token is active now.
	AuthenticateService(secret string) (*domain.Token, error)
	// Current returns a token as the ledger's view has it now; not found
	// when the view does not trust it (quarantined).
	Current(org, id string) (*domain.Token, bool)
	// Now is the ledger's clock.
	Now() time.Time
}

// Callout answers the servers' authorization requests for service
// connections ($SYS.REQ.USER.AUTH): it accepts a connection that presents
// an active token's secret as its token, into the SERVICES account with the
// token's Grant, and refuses every other.
type Callout struct {
	tokens        Tokens
	issuer        nkeys.KeyPair
	stream        string
	subjectPrefix string
	log           *slog.Logger
}

// authSubject is where servers send authorization requests.
const authSubject = "$SYS.REQ.USER.AUTH"

// NewCallout makes the callout; stream and subjectPrefix are the ledger's.
func NewCallout(tokens Tokens, creds Credentials, stream, subjectPrefix string, log *slog.Logger) (*Callout, error) {
	issuer, err := creds.Issuer()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Callout{tokens: tokens, issuer: issuer, stream: stream, subjectPrefix: subjectPrefix, log: log}, nil
}

// Serve answers requests on nc (the ledger's connection, in LEDGER) until
// the subscription is unsubscribed. Several ledgers share the requests (a
// queue group): any of them can answer, each from its own view.
func (c *Callout) Serve(nc *nats.Conn) (*nats.Subscription, error) {
	sub, err := nc.QueueSubscribe(authSubject, "tokenledger", func(m *nats.Msg) {
		answer, err := c.answer(m.Data)
		if err != nil {
			c.log.Error("nats callout: cannot answer", "error", err)
			return
		}
		_ = m.Respond(answer)
	})
	if err != nil {
		return nil, fmt.Errorf("nats callout: %w", err)
	}
	return sub, nil
}

// errRefused is the one reason a refused connection is given, whatever the
// cause: a caller learns nothing about the secret it tried.
const errRefused = "authorization violation: present an active TokenLedger API token as the NATS token"

func (c *Callout) answer(data []byte) ([]byte, error) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		// Not signed by a server (only the ledger's own user may publish
		// here): nothing to answer.
		return nil, fmt.Errorf("authorization request: %w", err)
	}
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	userJWT, err := c.userFor(req)
	if err != nil {
		c.log.Info("nats connection refused", "host", req.ClientInformation.Host, "reason", err.Error())
		resp.Error = errRefused
	} else {
		resp.Jwt = userJWT
	}
	token, err := resp.Encode(c.issuer)
	if err != nil {
		return nil, err
	}
	return []byte(token), nil
}

var errNoToken = errors.New("no token presented")

func (c *Callout) userFor(req *jwt.AuthorizationRequestClaims) (string, error) {
	secret := req.ConnectOptions.Token
	if secret == "" {
		return "", errNoToken
	}
	t, err := c.tokens.AuthenticateService(secret)
	if err != nil {
		return "", errors.New("not an active token")
	}
	g := GrantFor(t, secret, c.stream, c.subjectPrefix)
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Audience = ServicesAccount
	uc.Name = nameTag(t, g.Filter)
	uc.Pub.Allow.Add(g.Publish...)
	uc.Sub.Allow.Add(g.Subscribe...)
	if exp := t.ExpiresAt(); !exp.IsZero() {
		// The server itself cuts the connection when the token expires.
		uc.Expires = exp.Unix()
	}
	c.log.Info("nats connection accepted", "token_id", t.ID(), "organization", t.OrganizationID(), "host", req.ClientInformation.Host, "reads", g.Filter)
	return uc.Encode(c.issuer)
}

// nameTag is a connection's user name: its token, organization and grant
// fingerprint. The revoker reads it back from the servers' connection lists
// (a callout's user keeps its name there, not its tags), and WhoAmI from
// the server. Ids hold neither '@' nor '/'.
func nameTag(t *domain.Token, filter string) string {
	return t.ID() + "@" + t.OrganizationID() + "/" + fingerprint(t, filter)
}

func parseNameTag(s string) (id, org, grant string, ok bool) {
	id, rest, ok1 := strings.Cut(s, "@")
	org, grant, ok2 := strings.Cut(rest, "/")
	return id, org, grant, ok1 && ok2 && id != "" && org != "" && grant != ""
}
