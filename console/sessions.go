package console

import (
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
	// csrf is the value every form of this session must post back.
	csrf   string
	opened time.Time

	// Under sessions.mu:
	lastSeen time.Time
	flash    string
}

// sessions are kept in memory: a restart signs everyone out, which costs a
// person one paste of their token.
type sessions struct {
	mu             sync.Mutex
	byID           map[[sha256.Size]byte]*session // by the SHA-256 of the cookie's id
	idle, absolute time.Duration
	now            func() time.Time
}

// Bounds on what a flood of sign-ins can hold: the oldest sessions go
// first.
const (
	maxSessions         = 1 << 16
	maxSessionsPerToken = 32
)

func newSessions(idle, absolute time.Duration, now func() time.Time) *sessions {
	return &sessions{byID: make(map[[sha256.Size]byte]*session), idle: idle, absolute: absolute, now: now}
}

// randomText is 256 random bits, URL-safe.
func randomText() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func key(id string) [sha256.Size]byte { return sha256.Sum256([]byte(id)) }

// open starts a session for token (org, tokenID), signed in with a secret
// whose hash is h, and returns the id for its cookie.
func (s *sessions) open(org, tokenID string, h domain.SecretHash) (string, *session) {
	id := randomText()
	now := s.now()
	sess := &session{org: org, tokenID: tokenID, secretHash: h, csrf: randomText(), opened: now, lastSeen: now}
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
	return id, sess
}

func (s *sessions) expired(sess *session, now time.Time) bool {
	return now.Sub(sess.lastSeen) >= s.idle || now.Sub(sess.opened) >= s.absolute
}

// get returns the live session of cookie id, and counts this request as its
// use. An expired one is removed.
func (s *sessions) get(id string) (*session, bool) {
	k := key(id)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[k]
	if !ok {
		return nil, false
	}
	if s.expired(sess, now) {
		s.removeLocked(k)
		return nil, false
	}
	sess.lastSeen = now
	return sess, true
}

// end removes the session of cookie id.
func (s *sessions) end(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(key(id))
}

func (s *sessions) removeLocked(k [sha256.Size]byte) {
	delete(s.byID, k)
}

// count is how many sessions are open (tests).
func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// setFlash leaves a message for the session's next page.
func (s *sessions) setFlash(sess *session, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.flash = msg
}

// takeFlash returns the message left for this page, once.
func (s *sessions) takeFlash(sess *session) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := sess.flash
	sess.flash = ""
	return msg
}
