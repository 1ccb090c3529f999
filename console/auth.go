package console

import (
	"crypto/subtle"
	"errors"
	"net/http"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
	"github.com/tokenledger/tokenledger/httpapi"
)

const (
	// sessionCookie holds a session's random id: the only thing of a
	// sign-in the browser keeps.
	sessionCookie = "tl_session"
	// signInCookie is the sign-in form's double-submit CSRF value: before
	// sign-in there is no session to hold one.
	signInCookie = "tl_signin"
	cookiePath   = "/console"
)

// Messages the sign-in page shows, chosen by its m parameter: fixed texts,
// so nothing a URL carries is ever shown.
var signInMessages = map[string]string{
	"ended":       "Your session has ended: it was idle too long or open too long, or the token you signed in with was rotated, deleted or has expired. Sign in again.",
	"signed-out":  "You are signed out.",
	"deleted-own": "You deleted the token you were signed in with, so your session has ended. Sign in with another token.",
}

// signInFailed is the one message for every secret that does not sign in:
// the page tells a guesser no more than the API's 401 does.
const signInFailed = "Sign-in failed: that is not the secret of an active API token."

// signedIn is a request of a live session.
type signedIn struct {
	cookie string
	sess   *session
	me     *domain.Token
	caller app.Caller
}

// authed runs h for a request of a live session whose token is still active
// with the secret it signed in with; anything else goes to the sign-in page.
// A POST must also carry the session's CSRF value and come from the
// console's own origin.
//
// A POST's form is read before the session is judged: a form may arrive
// seconds after its headers, and the token must be judged as it is when
// the form is in, not as it was when the request began (a token deleted,
// rotated or demoted meanwhile acts no more, or with its new role).
func (c *Console) authed(h func(http.ResponseWriter, *http.Request, *signedIn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.readForm(w, r) {
			return
		}
		ck, err := r.Cookie(sessionCookie)
		if err != nil || ck.Value == "" {
			http.Redirect(w, r, "/console/sign-in", http.StatusSeeOther)
			return
		}
		sess, err := c.sessions.get(r.Context(), ck.Value)
		if err != nil {
			c.sessionsDown(w, r, err)
			return
		}
		if sess == nil {
			c.sessionEnded(w, r, "ended")
			return
		}
		// Asked again on every request: a rotation, deletion or expiry of the
		// token ends its sessions at their next request.
		me, err := c.ledger.Resume(sess.org, sess.tokenID, sess.secretHash)
		if errors.Is(err, app.ErrUnavailable) {
			// This ledger cannot tell now (past its staleness bound): the
			// session is not ended for it.
			w.Header().Set("Retry-After", "1")
			c.render(w, r, nil, http.StatusServiceUnavailable, "error.html", view{Title: "Console unavailable", Data: errorPage{
				Heading: "Console unavailable",
				Message: "The ledger cannot check your session right now (it is not in step with its event stream), so nothing was done. Try again in a moment.",
			}})
			return
		}
		if err != nil {
			c.endSession(r, ck.Value)
			c.sessionEnded(w, r, "ended")
			return
		}
		s := &signedIn{cookie: ck.Value, sess: sess, me: me, caller: c.gate.CallerOf(r, me)}
		if r.Method == http.MethodPost && !c.sameOriginForm(r, sess.csrf) {
			c.log.Warn("console form refused: CSRF check failed", "actor_token_id", me.ID(), "route", r.Pattern)
			c.render(w, r, s, http.StatusForbidden, "error.html", view{Title: "Form refused", Data: errorPage{
				Heading: "Form refused",
				Message: "This form was not sent from a page of this console (its CSRF check failed), so nothing was changed. Reload the page and try again.",
			}})
			return
		}
		h(w, r, s)
	}
}

// readForm reads a POST's form; when it cannot (it did not arrive within
// the server's body read timeout, or it is too large or malformed) it
// answers with a page saying so and reports false, and nothing is done.
func (c *Console) readForm(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost {
		return true
	}
	err := r.ParseForm()
	if err == nil {
		return true
	}
	status, msg := http.StatusBadRequest, "This form could not be read, so nothing was changed. Reload the page and try again."
	var (
		p    *httpapi.Problem
		maxb *http.MaxBytesError
	)
	switch err := httpapi.ReadBodyError(r, err); {
	case errors.As(err, &p) && p.Status == http.StatusRequestTimeout:
		status, msg = p.Status, "This form did not arrive in time ("+p.Detail+"). Reload the page and try again."
	case errors.As(err, &maxb):
		status, msg = http.StatusRequestEntityTooLarge, "This form is too large (at most 1 MiB), so nothing was changed."
	}
	c.render(w, r, nil, status, "error.html", view{Title: "Form not read", Data: errorPage{Heading: "Form not read", Message: msg}})
	return false
}

// sameOriginForm: the POST came from a page of this console: the browser
// says it is not cross-origin, and the form carries want, a value only the
// console's own pages hold (compared in constant time).
func (c *Console) sameOriginForm(r *http.Request, want string) bool {
	if c.origin.Check(r) != nil {
		return false
	}
	got := r.PostFormValue("csrf")
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// sessionsDown answers a request whose session could not be looked up
// (the shared sessions' bucket did not answer): nothing is done, and the
// browser keeps its cookie to try again.
func (c *Console) sessionsDown(w http.ResponseWriter, r *http.Request, err error) {
	c.log.Error("console sessions unavailable", "route", r.Pattern, "error", err)
	w.Header().Set("Retry-After", "2")
	c.render(w, r, nil, http.StatusServiceUnavailable, "error.html", view{Title: "Console unavailable", Data: errorPage{
		Heading: "Console unavailable",
		Message: "The console cannot reach its sessions right now, so nothing was done. Try again in a few seconds.",
	}})
}

// endSession ends the session of cookie id on every instance. A failure is
// logged: the callers end a session whose token no longer signs in, so it
// could not be used again anyway.
func (c *Console) endSession(r *http.Request, id string) {
	if err := c.sessions.end(r.Context(), id); err != nil {
		c.log.Error("console session not ended", "route", r.Pattern, "error", err)
	}
}

// flash leaves msg for the session's next page; a message lost costs the
// person a confirmation line, not the change, which is made.
func (c *Console) flash(r *http.Request, s *signedIn, msg string) {
	if err := c.sessions.setFlash(r.Context(), s.cookie, s.sess, msg); err != nil {
		c.log.Warn("console message not kept", "route", r.Pattern, "error", err)
	}
}

// sessionEnded forgets the browser's session and sends it to sign in.
func (c *Console) sessionEnded(w http.ResponseWriter, r *http.Request, why string) {
	c.setCookie(w, r, sessionCookie, "", -1)
	http.Redirect(w, r, "/console/sign-in?m="+why, http.StatusSeeOther)
}

// setCookie sets a console cookie: never readable by scripts, never sent
// with a request another site starts, only to the console's paths, and
// only over TLS when the console is reached over TLS (directly, or through
// a trusted proxy saying so). maxAge 0: until the browser closes; negative:
// delete it.
func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: cookiePath, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: c.gate.OverTLS(r),
	})
}

type signInData struct {
	Message string
	Failed  string
}

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if sess, _ := c.sessions.get(r.Context(), ck.Value); sess != nil {
			if _, err := c.ledger.Resume(sess.org, sess.tokenID, sess.secretHash); err == nil {
				http.Redirect(w, r, Path, http.StatusSeeOther)
				return
			}
		}
	}
	c.renderSignIn(w, r, http.StatusOK, signInData{Message: signInMessages[r.URL.Query().Get("m")]})
}

// renderSignIn shows the sign-in form with its double-submit value, kept
// from an earlier visit so that two open sign-in tabs both work.
func (c *Console) renderSignIn(w http.ResponseWriter, r *http.Request, status int, d signInData) {
	csrf := ""
	if ck, err := r.Cookie(signInCookie); err == nil && len(ck.Value) == 43 {
		csrf = ck.Value
	} else {
		csrf = randomText()
		c.setCookie(w, r, signInCookie, csrf, 0)
	}
	c.render(w, r, nil, status, "signin.html", view{Title: "Sign in", CSRF: csrf, Data: d})
}

func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	if !c.readForm(w, r) {
		return
	}
	ck, err := r.Cookie(signInCookie)
	if err != nil || !c.sameOriginForm(r, ck.Value) {
		c.log.Warn("console sign-in refused: CSRF check failed", "route", r.Pattern)
		c.renderSignIn(w, r, http.StatusForbidden, signInData{
			Failed: "This sign-in form was not sent from this console's sign-in page (its CSRF check failed). Try again from this page.",
		})
		return
	}
	tok, err := c.gate.SignIn(r, r.PostFormValue("token"))
	var limited *httpapi.RateLimitedError
	switch {
	case errors.As(err, &limited):
		c.renderSignIn(w, r, http.StatusTooManyRequests, signInData{
			Failed: "Too many failed sign-ins from your address. Try again in " + seconds(limited.RetryAfterSeconds()) + ".",
		})
		return
	case errors.Is(err, app.ErrUnavailable):
		w.Header().Set("Retry-After", "1")
		c.renderSignIn(w, r, http.StatusServiceUnavailable, signInData{
			Failed: "The ledger cannot check tokens right now (it is not in step with its event stream). Nothing was charged to your address; try again in a moment.",
		})
		return
	case err != nil:
		c.renderSignIn(w, r, http.StatusUnauthorized, signInData{Failed: signInFailed})
		return
	}
	// A sign-in replaces the browser's session: the old one ends now, not
	// when it would have gone idle.
	if old, err := r.Cookie(sessionCookie); err == nil {
		c.endSession(r, old.Value)
	}
	id, err := c.sessions.open(r.Context(), tok.OrganizationID(), tok.ID(), tok.SecretHash())
	if err != nil {
		c.sessionsDown(w, r, err)
		return
	}
	c.setCookie(w, r, sessionCookie, id, 0)
	c.setCookie(w, r, signInCookie, "", -1)
	c.log.Info("console sign-in", "token_id", tok.ID(), "request_id", c.gate.CallerOf(r, tok).RequestID)
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

// signOut ends the session on every instance before it says so: when that
// cannot be written, the browser keeps its cookie to sign out again.
func (c *Console) signOut(w http.ResponseWriter, r *http.Request, s *signedIn) {
	if err := c.sessions.end(r.Context(), s.cookie); err != nil {
		c.sessionsDown(w, r, err)
		return
	}
	c.sessionEnded(w, r, "signed-out")
}
