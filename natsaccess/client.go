package natsaccess

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxConsumers is how many consumers one token may have on the services'
// stream: the names Consumers returns, and no others.
const MaxConsumers = 8

// ConsumerName is the i-th consumer name a token may use (0 <= i <
// MaxConsumers). NATS permissions match whole subject tokens only, so a
// token's namespace is this fixed list rather than a prefix.
func ConsumerName(tokenID string, i int) string {
	return tokenID + "-" + strconv.Itoa(i)
}

// Consumers lists the consumer names a token may use.
func Consumers(tokenID string) []string {
	names := make([]string, MaxConsumers)
	for i := range names {
		names[i] = ConsumerName(tokenID, i)
	}
	return names
}

var inboxEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// InboxPrefix is the only inbox a connection made with secret may subscribe
// to. It comes from the secret, so a client computes it without asking
// anyone, and nobody without the secret can guess it and read another
// service's replies or deliveries. It is not the stored hash of the secret
// (a different input), and says nothing about the secret.
func InboxPrefix(secret string) string {
	sum := sha256.Sum256([]byte("tokenledger nats inbox\x00" + secret))
	return "_INBOX_" + inboxEncoding.EncodeToString(sum[:15])
}

// Options are the connection options of a service that authenticates with a
// TokenLedger secret: the token, and the inbox prefix it is allowed.
func Options(secret string) []nats.Option {
	return []nats.Option{nats.Token(secret), nats.CustomInboxPrefix(InboxPrefix(secret))}
}

// Identity is what a service's connection may do, as the server reports it.
type Identity struct {
	TokenID        string
	OrganizationID string
	// Stream is the services' stream the token's consumers are on (named
	// like the ledger's).
	Stream string
	// Filter is the widest subject the token may read: all of its
	// organization's events, or its own token's.
	Filter string
	// Consumers are the consumer names it may use.
	Consumers []string
}

// WhoAmI asks the server which token the connection authenticated with and
// what it may read ($SYS.REQ.USER.INFO answers every connection about
// itself).
func WhoAmI(ctx context.Context, nc *nats.Conn) (Identity, error) {
	msg, err := nc.RequestWithContext(ctx, "$SYS.REQ.USER.INFO", nil)
	if err != nil {
		return Identity{}, fmt.Errorf("ask the NATS server who this connection is: %w", err)
	}
	var resp struct {
		Data *struct {
			// The user's name (nameTag) comes as "user" from a callout's
			// user; "user_name" is read too in case a server moves it.
			User        string `json:"user"`
			UserName    string `json:"user_name"`
			Account     string `json:"account"`
			Permissions *struct {
				Publish *struct {
					Allow []string `json:"allow"`
				} `json:"publish"`
			} `json:"permissions"`
		} `json:"data"`
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return Identity{}, fmt.Errorf("user info: %w", err)
	}
	if resp.Error != nil {
		return Identity{}, fmt.Errorf("user info: %s", resp.Error.Description)
	}
	if resp.Data == nil || resp.Data.Permissions == nil || resp.Data.Permissions.Publish == nil {
		return Identity{}, errors.New("this connection did not authenticate with a TokenLedger token")
	}
	tokenID, _, _, ok := parseNameTag(resp.Data.User)
	if !ok {
		tokenID, _, _, _ = parseNameTag(resp.Data.UserName)
	}
	return identityOf(tokenID, resp.Data.Permissions.Publish.Allow)
}

// identityOf reads the token and its reading rights back from the
// permissions Grant made.
func identityOf(tokenID string, allow []string) (Identity, error) {
	id := Identity{TokenID: tokenID}
	for _, s := range allow {
		rest, ok := strings.CutPrefix(s, createPrefix)
		if !ok {
			continue
		}
		// STREAM.CONSUMER.FILTER...
		parts := strings.SplitN(rest, ".", 3)
		if len(parts) != 3 {
			continue
		}
		id.Stream = parts[0]
		id.Consumers = append(id.Consumers, parts[1])
		id.Filter = parts[2]
	}
	slices.Sort(id.Consumers)
	if id.TokenID == "" || len(id.Consumers) == 0 {
		return Identity{}, errors.New("this connection did not authenticate with a TokenLedger token")
	}
	// ledger.tokens.ORG.(> | TOKEN.*): the organization is the token after
	// the prefix's; the prefix itself may have dots.
	f := strings.TrimSuffix(strings.TrimSuffix(id.Filter, ".>"), "."+tokenID+".*")
	if i := strings.LastIndexByte(f, '.'); i >= 0 {
		id.OrganizationID = f[i+1:]
	}
	return id, nil
}

// APIPrefix is the JetStream API prefix of a service's connection: its
// consumers are in another account (see ServerConfig), reached through
// imports under this prefix. JetStream gives a service's JetStream object.
const APIPrefix = "$JS.SVC.API"

// JetStream is JetStream for a service's connection (nc made with Options).
func JetStream(nc *nats.Conn) (jetstream.JetStream, error) {
	return jetstream.NewWithAPIPrefix(nc, APIPrefix)
}

// The JetStream API subjects a service's permissions are made of.
const (
	createPrefix = APIPrefix + ".CONSUMER.CREATE."
	userInfo     = "$SYS.REQ.USER.INFO"
)

// MetadataDurable is the consumer metadata key that holds the durable name
// a service gave its consumer: a token's consumers have fixed names
// (Consumers), and ClaimConsumer finds a durable's by this key.
const MetadataDurable = "tokenledger_durable"

// ClaimConsumer returns the consumer that holds durable among the token's
// consumer names, bringing it to cfg, or creates it in a free name. An
// empty durable takes a free name for a one-off read: give cfg an
// InactiveThreshold (or delete it after) so the name comes free again.
// cfg's Name, Durable and Metadata[MetadataDurable] are set here; its
// filter must be a single FilterSubject within id.Filter. js must be
// JetStream(nc). Services cannot delete consumers: a durable keeps its name
// until the ledger removes it (its token gone), a one-off one is removed by
// its InactiveThreshold.
func ClaimConsumer(ctx context.Context, js jetstream.JetStream, stream string, id Identity, durable string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	if len(cfg.FilterSubjects) > 0 {
		return nil, errors.New("a service's consumer takes one FilterSubject: the server checks it against what the token may read")
	}
	meta := map[string]string{}
	for k, v := range cfg.Metadata {
		meta[k] = v
	}
	meta[MetadataDurable] = durable
	cfg.Metadata = meta
	// Two instances of one service may claim at once; a lost race shows as
	// a name taken, and the next round finds the winner's consumer.
	for range 3 {
		var free []string
		for _, name := range id.Consumers {
			c, err := js.Consumer(ctx, stream, name)
			switch {
			case errors.Is(err, jetstream.ErrConsumerNotFound):
				free = append(free, name)
				continue
			case err != nil:
				return nil, fmt.Errorf("consumer %s: %w", name, err)
			}
			if durable != "" && c.CachedInfo().Config.Metadata[MetadataDurable] == durable {
				return bringTo(ctx, js, stream, name, durable, c, cfg)
			}
		}
		if len(free) == 0 {
			return nil, fmt.Errorf("token %s already uses all of its %d consumer names: delete one it no longer needs (natsaccess.Consumers lists them)", id.TokenID, MaxConsumers)
		}
		cfg.Name = free[0]
		if durable != "" {
			cfg.Durable = free[0]
		}
		c, err := js.CreateConsumer(ctx, stream, cfg)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create consumer %s: %w", cfg.Name, err)
		}
		return c, nil
	}
	return nil, errors.New("could not claim a consumer name: others kept taking them")
}

// bringTo updates an existing durable to cfg where JetStream allows it
// (where it starts never changes).
func bringTo(ctx context.Context, js jetstream.JetStream, stream, name, durable string, c jetstream.Consumer, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	have := c.CachedInfo().Config
	cfg.Name, cfg.Durable = name, name
	cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
	u, err := js.UpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("durable %s (consumer %s): %w", durable, name, err)
	}
	return u, nil
}
