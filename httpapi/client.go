package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls the ledger's API with one bearer token. Errors the server
// answered with are *Problem; a ledger that cannot be reached or does not
// answer like one is an *UnreachableError.
type Client struct {
	BaseURL string
	Token   string
	HTTP    *http.Client
	// UserAgent identifies the caller in the ledger's events.
	UserAgent string
}

// NewClient returns a client for baseURL (e.g. http://127.0.0.1:8080).
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}, UserAgent: "ledger-cli"}
}

// UnreachableError: no usable answer came from the ledger.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string { return fmt.Sprintf("ledger at %s: %v", e.URL, e.Err) }
func (e *UnreachableError) Unwrap() error { return e.Err }

func (c *Client) do(ctx context.Context, method, path string, body any, header http.Header, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	req.Header.Set("User-Agent", c.UserAgent)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return &UnreachableError{URL: c.BaseURL, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return &UnreachableError{URL: c.BaseURL, Err: fmt.Errorf("read answer: %w", err)}
	}
	if resp.StatusCode >= 400 {
		return readProblem(data, resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &UnreachableError{URL: c.BaseURL, Err: fmt.Errorf("decode answer: %w", err)}
	}
	return nil
}

func keyHeader(key string) http.Header {
	if key == "" {
		return nil
	}
	return http.Header{"Idempotency-Key": {key}}
}

func tokenPath(id string) string { return "/v1/tokens/" + url.PathEscape(id) }

// CreateToken creates a token; the answer's Secret is shown once.
func (c *Client) CreateToken(ctx context.Context, req CreateRequest, idempotencyKey string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPost, "/v1/tokens", req, keyHeader(idempotencyKey), &t)
	return t, err
}

// ListTokens lists the caller's organization's tokens.
func (c *Client) ListTokens(ctx context.Context) (TokenList, error) {
	return c.ListTokensWhere(ctx, TokenQuery{})
}

// ListTokensWhere lists the caller's organization's tokens that match q.
func (c *Client) ListTokensWhere(ctx context.Context, q TokenQuery) (TokenList, error) {
	v := url.Values{}
	for name, value := range map[string]string{
		"scope": q.Scope, "workspace_id": q.WorkspaceID, "deployment_id": q.DeploymentID, "role": q.Role, "status": q.Status,
	} {
		if value != "" {
			v.Set(name, value)
		}
	}
	var l TokenList
	err := c.do(ctx, http.MethodGet, withQuery("/v1/tokens", v), nil, nil, &l)
	return l, err
}

// GetToken reads one token.
func (c *Client) GetToken(ctx context.Context, id string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodGet, tokenPath(id), nil, nil, &t)
	return t, err
}

// GetTokenAt reads a token as it was at time at, given in RFC 3339 form (the
// ledger checks it).
func (c *Client) GetTokenAt(ctx context.Context, id, at string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodGet, withQuery(tokenPath(id), url.Values{"at": {at}}), nil, nil, &t)
	return t, err
}

// TokenHistory reads a token's events, oldest first.
func (c *Client) TokenHistory(ctx context.Context, id string) (History, error) {
	var h History
	err := c.do(ctx, http.MethodGet, tokenPath(id)+"/history", nil, nil, &h)
	return h, err
}

// Roles lists the tokens that can act now in workspace workspaceID or in
// deployment deploymentID. Give one of them; the ledger refuses both or
// neither.
func (c *Client) Roles(ctx context.Context, workspaceID, deploymentID string) (HoldingList, error) {
	v := url.Values{}
	if workspaceID != "" {
		v.Set("workspace_id", workspaceID)
	}
	if deploymentID != "" {
		v.Set("deployment_id", deploymentID)
	}
	var l HoldingList
	err := c.do(ctx, http.MethodGet, withQuery("/v1/roles", v), nil, nil, &l)
	return l, err
}

func withQuery(path string, v url.Values) string {
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}

// UpdateToken changes name, description or role.
func (c *Client) UpdateToken(ctx context.Context, id string, req UpdateRequest) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPatch, tokenPath(id), req, nil, &t)
	return t, err
}

// RotateToken issues a new secret, shown once.
func (c *Client) RotateToken(ctx context.Context, id string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPost, tokenPath(id)+"/rotate", nil, nil, &t)
	return t, err
}

// AssignToken gives an organization token a role in a workspace.
func (c *Client) AssignToken(ctx context.Context, id, workspaceID, role string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPut, tokenPath(id)+"/workspaces/"+url.PathEscape(workspaceID), AssignRequest{Role: role}, nil, &t)
	return t, err
}

// UnassignToken removes an organization token from a workspace.
func (c *Client) UnassignToken(ctx context.Context, id, workspaceID string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodDelete, tokenPath(id)+"/workspaces/"+url.PathEscape(workspaceID), nil, nil, &t)
	return t, err
}

// DeleteToken deletes a token.
func (c *Client) DeleteToken(ctx context.Context, id string) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodDelete, tokenPath(id), nil, nil, &t)
	return t, err
}

// Verify checks a secret.
func (c *Client) Verify(ctx context.Context, secret string) (Verification, error) {
	return c.VerifyAfter(ctx, secret, 0)
}

// VerifyAfter is Verify answered by a view that has reached stream sequence
// minSeq (0: any): pass the last event sequence you have seen, and the answer
// takes that event into account.
func (c *Client) VerifyAfter(ctx context.Context, secret string, minSeq uint64) (Verification, error) {
	path := "/v1/verify"
	if minSeq > 0 {
		path += "?min_sequence=" + strconv.FormatUint(minSeq, 10)
	}
	var v Verification
	err := c.do(ctx, http.MethodPost, path, VerifyRequest{Token: secret}, nil, &v)
	return v, err
}

// readProblem reads a problem document; anything else (a proxy's page, say)
// becomes a problem with the given status and title and the text as detail.
func readProblem(data []byte, status int, title string) *Problem {
	p := &Problem{}
	if json.Unmarshal(data, p) != nil || p.Status == 0 {
		p = &Problem{Status: status, Title: title, Detail: strings.TrimSpace(string(data))}
	}
	return p
}
