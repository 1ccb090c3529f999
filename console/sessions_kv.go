package console

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/shared"
)

// Behind a load balancer without stickiness, every other click reaches
// another instance of the ledger: sessions kept in one process's memory
// would sign a person out at each. kvSessions keeps them in a bucket all
// instances share, read on every request from the stream's leader (see
// shared.Open), so a session opened on A works on B, and a sign-out or an
// expiry holds on every instance from the moment it is written.
//
// What the bucket holds of a session is what memory held: the token's
// organization and id, the SHA-256 of the secret it signed in with (as the
// stream's own events hold it: a hash of 256 random bits, from which
// nobody gets the secret, and which no route accepts in the secret's
// place), when it was opened and last used, and the message for its next
// page. Its key is the SHA-256 of the cookie's id, never the id; the CSRF
// value is derived from the id (csrfOf), not kept. Someone who reads the
// bucket can neither present a session nor forge its forms.

// SessionBucketTTL is how long the sessions bucket keeps an entry after its
// last write: every session is over by then (a session's entry is written
// at least every sessionTouchEvery while it is used), with five minutes
// for clocks that disagree.
func SessionBucketTTL(idle, absolute time.Duration) time.Duration {
	return max(idle, absolute) + 5*time.Minute
}

// SessionBucket opens the bucket of the console's sessions that every
// instance of the stream's ledger shares (tokenledger_sessions_<stream>),
// making it the first time. idle and absolute are the limits the consoles
// are given (WithSessionLimits; DefaultIdle and DefaultAbsolute if none):
// entries go SessionBucketTTL after their last write, and past 262,144
// entries (sessions, per-token lists and sign-out markers) the oldest go.
func SessionBucket(ctx context.Context, js jetstream.JetStream, cfg shared.Config, idle, absolute time.Duration) (jetstream.KeyValue, error) {
	return shared.Open(ctx, js, cfg, shared.Bucket{
		Kind:        shared.KindSessions,
		Description: "TokenLedger: web console sessions (by the hash of their id), shared by the ledger's instances",
		TTL:         SessionBucketTTL(idle, absolute),
		MaxMsgs:     4 * maxSessions,
		MaxValue:    16 << 10,
	})
}

// WithSharedSessions keeps the console's sessions in kv (see SessionBucket)
// rather than in this process's memory, shared with every instance that
// uses the same bucket.
func WithSharedSessions(kv jetstream.KeyValue) Option {
	return func(c *config) { c.sessionsKV = kv }
}

// A session's last use is written at most this often: a click costs one
// read, and a write only now and then. A session may therefore end up to
// this much before idle has passed since its last request.
func sessionTouchEvery(idle time.Duration) time.Duration {
	return min(time.Minute, idle/60)
}

// storedSession is a session's entry.
type storedSession struct {
	Org     string `json:"org"`
	TokenID string `json:"token_id"`
	// SecretHash is the hex SHA-256 of the secret the session signed in
	// with.
	SecretHash string `json:"secret_hash"`
	Opened     int64  `json:"opened"`    // Unix nanoseconds
	LastSeen   int64  `json:"last_seen"` // Unix nanoseconds, every sessionTouchEvery
	Flash      string `json:"flash,omitempty"`
}

// tokenSessions is a token's entry: its sessions, oldest first, so that a
// flood of sign-ins with one token ends that token's oldest sessions, not
// anyone else's (maxSessionsPerToken).
type tokenSessions struct {
	Sessions []tokenSession `json:"sessions"`
}

type tokenSession struct {
	Key    string `json:"key"`
	Opened int64  `json:"opened"`
}

// sessionWait bounds each look at the bucket: with NATS away a page says
// so within seconds rather than hanging.
const sessionWait = 3 * time.Second

type kvSessions struct {
	kv             jetstream.KeyValue
	idle, absolute time.Duration
	touch          time.Duration
	now            func() time.Time
}

func newKVSessions(kv jetstream.KeyValue, idle, absolute time.Duration, now func() time.Time) *kvSessions {
	return &kvSessions{kv: kv, idle: idle, absolute: absolute, touch: sessionTouchEvery(idle), now: now}
}

// sessionKey is the entry of cookie id: "s." and the hex SHA-256 of the id.
func sessionKey(id string) string {
	k := key(id)
	return "s." + hex.EncodeToString(k[:])
}

// tokenKey is token (org, id)'s list of sessions.
func tokenKey(org, tokenID string) string {
	k := sha256.Sum256([]byte(org + "\x00" + tokenID))
	return "t." + hex.EncodeToString(k[:])
}

func (s *kvSessions) open(ctx context.Context, org, tokenID string, h domain.SecretHash) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, sessionWait)
	defer cancel()
	id := randomText()
	k := sessionKey(id)
	now := s.now()
	if err := s.admit(ctx, tokenKey(org, tokenID), k, now); err != nil {
		return "", err
	}
	b, err := json.Marshal(storedSession{Org: org, TokenID: tokenID, SecretHash: hex.EncodeToString(h[:]), Opened: now.UnixNano(), LastSeen: now.UnixNano()})
	if err != nil {
		return "", err
	}
	// Create: a session's entry is never written over another's.
	if _, err := s.kv.Create(ctx, k, b); err != nil {
		return "", err
	}
	return id, nil
}

// admit adds session k to its token's list, ending the token's oldest
// sessions while it has maxSessionsPerToken or more. Sessions opened longer
// ago than the absolute limit are over and leave the list.
func (s *kvSessions) admit(ctx context.Context, tk, k string, now time.Time) error {
	for {
		var (
			list tokenSessions
			rev  uint64
		)
		e, err := s.kv.Get(ctx, tk)
		switch {
		case err == nil:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &list) // unreadable: start afresh
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return err
		}
		live := list.Sessions[:0]
		for _, ts := range list.Sessions {
			if now.Sub(time.Unix(0, ts.Opened)) < s.absolute {
				live = append(live, ts)
			}
		}
		slices.SortFunc(live, func(a, b tokenSession) int { return cmp.Compare(a.Opened, b.Opened) })
		for len(live) >= maxSessionsPerToken {
			if err := s.kv.Delete(ctx, live[0].Key); err != nil {
				return err
			}
			live = live[1:]
		}
		list.Sessions = append(live, tokenSession{Key: k, Opened: now.UnixNano()})
		b, err := json.Marshal(list)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, tk, b)
		} else {
			_, err = s.kv.Update(ctx, tk, b, rev)
		}
		if err == nil || (!errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch)) {
			return err
		}
		// Another sign-in of the token was admitted meanwhile: again,
		// with it in the list.
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// read is session k's entry and revision; nil when there is none or it is
// unreadable.
func (s *kvSessions) read(ctx context.Context, k string) (*storedSession, uint64, error) {
	e, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var st storedSession
	if json.Unmarshal(e.Value(), &st) != nil {
		return nil, 0, nil
	}
	return &st, e.Revision(), nil
}

func (s *kvSessions) get(ctx context.Context, id string) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, sessionWait)
	defer cancel()
	k := sessionKey(id)
	st, rev, err := s.read(ctx, k)
	if err != nil || st == nil {
		return nil, err
	}
	h, err := hex.DecodeString(st.SecretHash)
	if err != nil || len(h) != len(domain.SecretHash{}) {
		return nil, nil
	}
	now := s.now()
	opened, lastSeen := time.Unix(0, st.Opened), time.Unix(0, st.LastSeen)
	if now.Sub(lastSeen) >= s.idle || now.Sub(opened) >= s.absolute {
		// Over on every instance, whichever asks first; the delete only
		// tidies.
		_ = s.kv.Delete(ctx, k)
		return nil, nil
	}
	if now.Sub(lastSeen) >= s.touch {
		st.LastSeen = now.UnixNano()
		if b, err := json.Marshal(st); err == nil {
			// A write that lost to another (a flash, another instance's
			// touch) is fine: the entry was written just now either way.
			if _, err := s.kv.Update(ctx, k, b, rev); err == nil {
				lastSeen = now
			}
		}
	}
	sess := &session{org: st.Org, tokenID: st.TokenID, secretHash: domain.SecretHash(h), csrf: csrfOf(id), opened: opened, lastSeen: lastSeen, flash: st.Flash}
	return sess, nil
}

func (s *kvSessions) end(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, sessionWait)
	defer cancel()
	return s.kv.Delete(ctx, sessionKey(id))
}

// change applies f to session id's entry with a compare-and-set, again
// while another write wins; f reports whether there is anything to write.
// A session that is gone is left gone.
func (s *kvSessions) change(ctx context.Context, id string, f func(*storedSession) bool) error {
	ctx, cancel := context.WithTimeout(ctx, sessionWait)
	defer cancel()
	k := sessionKey(id)
	for {
		st, rev, err := s.read(ctx, k)
		if err != nil || st == nil || !f(st) {
			return err
		}
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		_, err = s.kv.Update(ctx, k, b, rev)
		if err == nil || !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (s *kvSessions) setFlash(ctx context.Context, id string, _ *session, msg string) error {
	return s.change(ctx, id, func(st *storedSession) bool {
		st.Flash = msg
		return true
	})
}

// takeFlash clears the message with a compare-and-set: of two pages asking
// at once (two instances), one shows it.
func (s *kvSessions) takeFlash(ctx context.Context, id string, sess *session) (string, error) {
	if sess.flash == "" {
		return "", nil // none when the session was read: no round trip
	}
	var msg string
	err := s.change(ctx, id, func(st *storedSession) bool {
		msg, st.Flash = st.Flash, ""
		return msg != ""
	})
	if err != nil {
		return "", err
	}
	return msg, nil
}
