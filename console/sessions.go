package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"sync"
	"time"

	"github.com/tokenledger/tokenledger/domain"
)

// A session is what the server keeps of a sign-in: which token, and the
// hash of the secret it was signed in with (never the secret), so that each
// request can ask the ledger whether that token still has that secret and
// is active (app.Ledger.Resume). The browser keeps only a random id.
type session struct {
	org, tokenID string
	secretHash   domain.SecretHash
	// csrf is the value every form of this session must post back (see
	// csrfOf).
	csrf   string
	opened time.Time

	// Under memSessions.mu (in memory), or as read (shared):
	lastSeen time.Time
	flash    string
}

// sessionStore keeps sessions by the cookie's id, of which it keeps only a
// hash: in memory (memSessions, one process) or in a bucket every instance
// of the ledger shares (kvSessions). Expired sessions are never returned.
type sessionStore interface {
	// open starts a session for token (org, tokenID), signed in with a
	// secret whose hash is h, and returns the id for its cookie.
	open(ctx context.Context, org, tokenID string, h domain.SecretHash) (string, error)
	// get returns the live session of cookie id (nil when there is none)
	// and counts this request as its use.
	get(ctx context.Context, id string) (*session, error)
	// end removes the session of cookie id, everywhere.
	end(ctx context.Context, id string) error
	// setFlash leaves a message for the session's next page.
	setFlash(ctx context.Context, id string, sess *session, msg string) error
	// takeFlash returns the message left for this page, once.
	takeFlash(ctx context.Context, id string, sess *session) (string, error)
}

// Bounds on what a flood of sign-ins can hold: the oldest sessions go
// first.
const (
	maxSessions         = 1 << 16
	maxSessionsPerToken = 32
)

// randomText is 256 random bits, URL-safe.
func randomText() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func key(id string) [sha256.Size]byte { return sha256.Sum256([]byte(id)) }

// csrfOf is the CSRF value of the session of cookie id, derived from the id
// rather than kept: a store holding sessions for every instance then holds
// nothing a form could be forged with, and only the holder of the cookie
// (HttpOnly, so not even the page's scripts) can compute it. HMAC keyed by
// the id, so it says nothing of the id, nor of the id's hash the store
// keeps.
func csrfOf(id string) string {
	m := hmac.New(sha256.New, []byte(id))
	m.Write([]byte("tokenledger console csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// memSessions are kept in memory: a restart signs everyone out, which
// costs a person one paste of their token. One process only: behind a load
// balancer use kvSessions.
type memSessions struct {
	mu             sync.Mutex
	byID           map[[sha256.Size]byte]*session // by the SHA-256 of the cookie's id
	idle, absolute time.Duration
	now            func() time.Time
}

func newMemSessions(idle, absolute time.Duration, now func() time.Time) *memSessions {
	return &memSessions{byID: make(map[[sha256.Size]byte]*session), idle: idle, absolute: absolute, now: now}
}

func (s *memSessions) open(_ context.Context, org, tokenID string, h domain.SecretHash) (string, error) {
	id := randomText()
	now := s.now()
	sess := &session{org: org, tokenID: tokenID, secretHash: h, csrf: csrfOf(id), opened: now, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := 0
	for k, other := range s.byID {
		if s.expired(other, now) {
			s.removeLocked(k)
		} else if other.org == org && other.tokenID == tokenID {
			mine++
		}
	}
	for (mine >= maxSessionsPerToken || len(s.byID) >= maxSessions) && len(s.byID) > 0 {
		var oldest [sha256.Size]byte
		var found *session
		for k, other := range s.byID {
			if mine >= maxSessionsPerToken && (other.org != org || other.tokenID != tokenID) {
				continue
			}
			if found == nil || other.lastSeen.Before(found.lastSeen) {
				oldest, found = k, other
			}
		}
		if found == nil {
			break
		}
		if found.org == org && found.tokenID == tokenID {
			mine--
		}
		s.removeLocked(oldest)
	}
	s.byID[key(id)] = sess
	return id, nil
}

func (s *memSessions) expired(sess *session, now time.Time) bool {
	return now.Sub(sess.lastSeen) >= s.idle || now.Sub(sess.opened) >= s.absolute
}

func (s *memSessions) get(_ context.Context, id string) (*session, error) {
	k := key(id)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[k]
	if !ok {
		return nil, nil
	}
	if s.expired(sess, now) {
		s.removeLocked(k)
		return nil, nil
	}
	sess.lastSeen = now
	return sess, nil
}

func (s *memSessions) end(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(key(id))
	return nil
}

func (s *memSessions) removeLocked(k [sha256.Size]byte) {
	delete(s.byID, k)
}

func (s *memSessions) setFlash(_ context.Context, _ string, sess *session, msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.flash = msg
	return nil
}

func (s *memSessions) takeFlash(_ context.Context, _ string, sess *session) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := sess.flash
	sess.flash = ""
	return msg, nil
}
